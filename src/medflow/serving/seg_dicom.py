"""The /segment answer as a DICOM Segmentation (highdicom): binary, referencing the upload.

The SEG is a new series in the upload's study; it references the uploaded image (study,
series, SOP instance, and the frame segmented) and names the algorithm (model name and
version). highdicom copies the patient and study modules of the source; the source given to
it is the upload's header without its pixel data, with the type-2 attributes highdicom needs
added empty when the upload lacks them, so the SEG carries no identifier the upload does
not. It is returned to the caller only; nothing of it is logged.
"""

from __future__ import annotations

import io
import logging
from http import HTTPStatus

import numpy as np
from pydicom.dataset import Dataset

from medflow.imaging.pixels import n_frames
from medflow.serving.errors import ServeError

logger = logging.getLogger(__name__)

MEDIA_TYPE = "application/dicom"
MANUFACTURER = "medflow"
SERIES_NUMBER = 9901  # a series of its own in the study; viewers sort it after the images
SERIES_DESCRIPTION = "medflow segmentation"
# type-2 attributes highdicom copies from the source and fails without (added empty)
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
# what a SEG cannot reference the image without
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# highdicom logs at WARNING when every frame of a SEG is empty and it keeps them all
logging.getLogger("highdicom.seg.sop").setLevel(logging.ERROR)


def wants_dicom(accept: str) -> bool:
    """Whether an Accept header asks for a DICOM SEG (application/dicom) rather than JSON."""
    return any(
        part.split(";")[0].strip().lower() == MEDIA_TYPE for part in (accept or "").split(",")
    )


def seg_source(ds: Dataset) -> Dataset:
    """The upload's header as highdicom's source image: every element but the pixel data,
    plus the type-2 attributes it needs, empty where the upload lacks them. The upload's
    own data set is not modified."""
    missing = [k for k in _REQUIRED if not str(ds.get(k, "") or "").strip()]
    if missing:
        raise ServeError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "invalid_image",
            f"a DICOM SEG cannot reference this image: it lacks {', '.join(missing)};"
            " ask for JSON (no Accept: application/dicom)",
        )
    # Without a frame of reference, or a projection image (DX, CR, MG, SC...: no slice
    # thickness, no position, whether or not it carries a frame of reference), highdicom
    # would write a Pixel Measures Sequence without SliceThickness, which highdicom's own
    # reader then refuses: the SEG leaves pixel spacing out there (the JSON answer gives it).
    dropped = {"PixelData", "FloatPixelData", "DoubleFloatPixelData"}
    thickness = str(ds.get("SliceThickness", "") or "").strip()
    if "FrameOfReferenceUID" not in ds or not (thickness or "ImagePositionPatient" in ds):
        dropped |= {"PixelSpacing", "ImagerPixelSpacing"}
    source = Dataset()
    for element in ds:
        if element.keyword not in dropped:
            source.add(element)
    for keyword in _TYPE2:
        if keyword not in source:
            setattr(source, keyword, "")
    source.file_meta = getattr(ds, "file_meta", Dataset())
    return source


def build_seg(
    ds: Dataset,
    masks: np.ndarray,
    frame: int,
    segment_names: list[str],
    model_name: str,
    model_version: str,
) -> bytes:
    """A binary DICOM SEG of `masks` (K, rows, columns) on frame `frame` (0-based) of the
    uploaded image `ds`, as the bytes of a Part-10 file; segment k is segment_names[k - 1].

    Raises:
        ServeError: 422 `invalid_image` when the upload's header does not allow a SEG
            (no UIDs to reference, attributes highdicom needs for its modality).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = seg_source(ds)
    k, rows, cols = masks.shape
    if len(segment_names) != k:
        raise ValueError(f"{k} mask planes for {len(segment_names)} segment names")
    frames = n_frames(ds)
    # (frames, rows, columns, segments): the segmented frame holds the masks; for a
    # multi-frame upload the other frames were not segmented and stay empty
    pixels = np.zeros((frames if frames > 1 else 1, rows, cols, k), dtype=bool)
    pixels[frame if frames > 1 else 0] = np.moveaxis(masks > 0, 0, -1)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name,
        family=codes.cid7162.ArtificialIntelligence,
        version=model_version,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in enumerate(segment_names, 1)
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=[source],
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=model_name,
            software_versions=model_version,
            device_serial_number=model_version,
            series_description=SERIES_DESCRIPTION,
        )
    except AttributeError as exc:
        # "'Dataset' object has no attribute 'X'": a keyword, never a value
        raise ServeError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "invalid_image",
            f"a DICOM SEG of this image cannot be made: its header lacks an attribute its"
            f" modality needs ({exc}); ask for JSON (no Accept: application/dicom)",
        ) from None
    except (ValueError, TypeError, KeyError) as exc:
        # highdicom's messages may quote UIDs of the upload: the type only
        logger.info("no SEG for an upload: highdicom raised %s", type(exc).__name__)
        raise ServeError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "invalid_image",
            f"a DICOM SEG of this image cannot be made ({type(exc).__name__} in highdicom:"
            " its header does not describe an image a SEG can reference, e.g. a multi-frame"
            " image without a frame of reference); ask for JSON (no Accept: application/dicom)",
        ) from None
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
