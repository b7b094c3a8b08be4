"""Real DICOM SEG objects built with highdicom from small synthetic source images."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from tests.helpers.dicom_files import image_dataset

# what highdicom copies from a source image into its SEG (it needs them present)
_PATIENT_STUDY = {
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "StudyID": "1",
    "AccessionNumber": "ACC7730021",
    "ReferringPhysicianName": "",
    "SeriesNumber": 1,
    "InstanceNumber": 1,
}


def source_image(rows: int = 20, columns: int = 16, frames: int = 1, **attrs: object) -> Dataset:
    """An 8-bit grey Secondary Capture image (multi-frame with plane positions when frames >
    1, as highdicom needs them to map SEG frames onto source frames)."""
    if frames == 1:
        pixels = np.arange(rows * columns, dtype=np.uint8).reshape(rows, columns)
        return image_dataset(
            pixels, bits_stored=8, sop_class=SecondaryCaptureImageStorage, **_PATIENT_STUDY,
            **attrs,
        )  # fmt: skip
    pixels = np.zeros((frames, rows, columns), np.uint8)
    ds = image_dataset(
        pixels,
        bits_stored=8,
        sop_class=MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        FrameOfReferenceUID=generate_uid(),
        **_PATIENT_STUDY,
        **attrs,
    )
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.5], 1.0
    shared = Dataset()
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for i in range(frames):
        position, group = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, float(i)]
        group.PlanePositionSequence = [position]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    return ds


def segmentation(
    sources: list[Dataset],
    masks: np.ndarray,
    labels: list[str],
    kind: str = "BINARY",
) -> Dataset:
    """A SEG of `sources` with one segment per label; masks is (frames, rows, columns,
    segments), bool for BINARY, floats in [0, 1] for FRACTIONAL."""
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, label in enumerate(labels, start=1)
    ]
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks,
        segmentation_type=kind,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=10,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medflow-tests",
        manufacturer_model_name="seg-factory",
        software_versions="1",
        device_serial_number="1",
        max_fractional_value=255,
        omit_empty_frames=False,
    )
