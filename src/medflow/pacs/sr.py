"""A classifier's answer on one PACS image as a DICOM SR (highdicom TID 1500, Comprehensive 3D).

One image-level measurement group per finding: the finding (the class name, coded in the
private scheme 99MEDFLOW), Present or Absent by the served decision, its probability and the
decision threshold, the algorithm (model name and version), and the source image referenced.
The SR joins the image's study (its patient and study modules are copied, as a viewer needs
them); its UIDs are derived from the image's and the model's, so storing it again replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medflow.serving.seg_dicom import seg_source

MANUFACTURER = "medflow"
SERIES_NUMBER = 9902  # after the images and a SEG's 9901
SERIES_DESCRIPTION = "medflow result"
SCHEME = "99MEDFLOW"  # a private coding scheme (PS3.16 8.2: "99" prefix) for class names


@dataclass(frozen=True)
class Finding:
    """One class as the model judged it on an image."""

    name: str  # the class name
    probability: float
    present: bool


@dataclass(frozen=True)
class ModelAnswer:
    """What the served model answered for one image, and which model it was."""

    model_name: str
    model_version: str
    threshold: float | None  # on p(positive class); None for more than two classes (argmax)
    findings: tuple[Finding, ...]

    @property
    def model_tag(self) -> str:
        return f"{self.model_name}:{self.model_version}"


def derived_uid(kind: str, *parts: str) -> str:
    """A UID that is the same for the same parts (a SHA-512 of them, so it reveals none)."""
    return generate_uid(entropy_srcs=["medflow", kind, *parts])


def finding_code(name: str):  # noqa: ANN201 - highdicom.sr.CodedConcept
    """The coded concept of a class name."""
    import highdicom as hd

    return hd.sr.CodedConcept(value=name[:64], scheme_designator=SCHEME, meaning=name[:64])


def build_sr(image: Dataset, answer: ModelAnswer) -> Dataset:
    """The TID 1500 SR of `answer` on `image` (a full data set or its header), ready to store.

    Raises:
        ValueError: the answer has no finding.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not answer.findings:
        raise ValueError("an SR needs at least one finding")
    source = seg_source(image)  # the header, plus the type-2 attributes highdicom needs
    algorithm = hd.sr.AlgorithmIdentification(answer.model_name, answer.model_version)
    image_ref = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
    groups = []
    for finding in answer.findings:
        concept = finding_code(finding.name)
        measurements = [
            hd.sr.Measurement(codes.DCM.Probability, finding.probability, codes.UCUM.NoUnits)
        ]
        if answer.threshold is not None:
            measurements.append(
                hd.sr.Measurement(codes.DCM.ThresholdValue, answer.threshold, codes.UCUM.NoUnits)
            )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid(
                        "tracking", source.SOPInstanceUID, answer.model_tag, finding.name
                    ),
                    identifier=f"{answer.model_name} {finding.name}"[:64],
                ),
                finding_type=concept,
                algorithm_id=algorithm,
                source_images=[image_ref],
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        concept, codes.SCT.Present if finding.present else codes.SCT.Absent
                    )
                ],
                measurements=measurements,
            )
        )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device", answer.model_tag),
        manufacturer_name=MANUFACTURER,
        model_name=answer.model_name[:64],
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(codes.DCM.Device, device)
    )
    report = hd.sr.MeasurementReport(context, codes.SCT.ImagingProcedure, groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=derived_uid("sr-series", source.StudyInstanceUID, answer.model_tag),
        series_number=SERIES_NUMBER,
        sop_instance_uid=derived_uid("sr", source.SOPInstanceUID, answer.model_tag),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=SERIES_DESCRIPTION,
    )
    sr.preamble = b"\0" * 128  # STOW sends what pydicom writes: keep a Part-10 file
    return sr
