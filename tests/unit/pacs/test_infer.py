"""PACS inference's parts: the SR builder (highdicom round trip), the ledger, the QIDO filters
of a pass, which instances are images, and the deployment's schedule and trigger."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import yaml
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SegmentationStorage,
)

from medflow.config import OrchestrationParams, PacsParams
from medflow.pacs.infer import _is_image, infer_filters
from medflow.pacs.infer_bento import _TAG
from medflow.pacs.ledger import REFUSED, STORED, Ledger
from medflow.pacs.sr import Finding, ModelAnswer, build_sr
from tests.helpers.deid_key import KEY
from tests.helpers.dicom_files import image_dataset

BINARY = ModelAnswer("medflow-classifier", "v7abc", 0.3, (Finding("lesion", 0.87, True),))


def _image(**attrs: object) -> pydicom.Dataset:
    pixels = np.arange(256, dtype=np.uint16).reshape(16, 16)
    return image_dataset(pixels, sop_class=ComputedRadiographyImageStorage, Modality="CR", **attrs)


def _read(sr: pydicom.Dataset) -> hd.sr.Comprehensive3DSR:
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return hd.sr.srread(buffer)


def _text(group, concept) -> str:
    return next(
        item.TextValue
        for item in group[0].ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == concept.value
    )


def test_sr_round_trip_references_the_image_and_holds_the_answer() -> None:
    image = _image()
    sr = _read(build_sr(image, BINARY))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert (sr.StudyInstanceUID, sr.PatientID) == (image.StudyInstanceUID, image.PatientID)
    assert sr.SeriesInstanceUID != image.SeriesInstanceUID and sr.Manufacturer == "medflow"
    assert "PixelData" not in sr
    (group,) = sr.content.get_image_measurement_groups()
    assert group.source_images[0].referenced_sop_instance_uid == image.SOPInstanceUID
    assert group.finding_type.meaning == "lesion"
    evaluation = group.get_qualitative_evaluations()[0]
    assert (evaluation.name.meaning, evaluation.value) == ("lesion", codes.SCT.Present)
    measured = {m.name.meaning: m.value for m in group.get_measurements()}
    assert measured == {"Probability": pytest.approx(0.87), "Threshold Value": pytest.approx(0.3)}
    assert _text(group, codes.DCM.AlgorithmName) == "medflow-classifier"
    assert _text(group, codes.DCM.AlgorithmVersion) == "v7abc"


def test_sr_uids_follow_image_and_model() -> None:
    """Stored again for the same image and model, the SR replaces itself on the PACS."""
    image = _image()
    same = build_sr(image, BINARY)
    assert build_sr(image, BINARY).SOPInstanceUID == same.SOPInstanceUID
    other_model = ModelAnswer("medflow-classifier", "v8", 0.3, BINARY.findings)
    assert build_sr(image, other_model).SOPInstanceUID != same.SOPInstanceUID
    assert build_sr(_image(), BINARY).SOPInstanceUID != same.SOPInstanceUID
    assert image.SOPInstanceUID not in same.SOPInstanceUID


def test_sr_of_a_multiclass_answer_has_a_group_per_class_and_no_threshold() -> None:
    findings = (Finding("a", 0.2, False), Finding("b", 0.7, True), Finding("c", 0.1, False))
    sr = _read(build_sr(_image(), ModelAnswer("m", "1", None, findings)))
    groups = sr.content.get_image_measurement_groups()
    seen = {}
    for group in groups:
        evaluation = group.get_qualitative_evaluations()[0]
        (measurement,) = group.get_measurements()
        seen[evaluation.name.meaning] = (evaluation.value == codes.SCT.Present, measurement.value)
    assert seen == {"a": (False, 0.2), "b": (True, 0.7), "c": (False, 0.1)}


def test_sr_of_an_image_without_patient_attributes() -> None:
    """highdicom needs the type-2 patient/study attributes: they are added empty."""
    image = _image()
    for keyword in ("PatientName", "PatientID", "StudyDate"):
        delattr(image, keyword)
    sr = _read(build_sr(image, BINARY))
    assert sr.PatientID == "" and "PatientID" not in image


def test_sr_needs_a_finding() -> None:
    with pytest.raises(ValueError, match="at least one finding"):
        build_sr(_image(), ModelAnswer("m", "1", 0.5, ()))


def test_ledger_records_per_image_and_model_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / ".medflow" / "pacs_infer.sqlite"
    sop = "1.2.826.0.1.3680043.8.498.1234567890"
    with Ledger(path, KEY) as ledger:
        assert not ledger.has(sop, "m:1")
        ledger.record(sop, "m:1", STORED, "SR")
        ledger.record("1.2.3.4", "m:1", REFUSED, "not_an_image")
        assert ledger.has(sop, "m:1") and not ledger.has(sop, "m:2")
        assert ledger.counts("m:1") == {STORED: 1, REFUSED: 1}
    with Ledger(path, KEY) as ledger:
        assert ledger.done("m:1") == {ledger.token(sop), ledger.token("1.2.3.4")}
        ledger.record(sop, "m:1", STORED, "SR")  # again: still one row
        assert ledger.counts("m:1") == {STORED: 1, REFUSED: 1}
    assert sop.encode() not in path.read_bytes() and b"1.2.3.4" not in path.read_bytes()
    with Ledger(path, b"another-key-0123456789") as other:
        assert not other.has(sop, "m:1")  # tokens are keyed


def test_filters_window_replaces_the_training_date_and_splits_by_level() -> None:
    pacs = PacsParams(
        filters={"StudyDate": "20240101-20241231", "Modality": "CR", "StudyDescription": "CHEST*"},
        infer={"lookback_days": 2},
    )
    study, series = infer_filters(pacs, date(2026, 3, 1))
    assert study == {"StudyDate": "20260227-20260301", "StudyDescription": "CHEST*"}
    assert series == {"Modality": "CR"}


def test_filters_of_the_infer_section_win_and_no_window_keeps_their_date() -> None:
    pacs = PacsParams(
        filters={"Modality": "CR"},
        infer={"lookback_days": 0, "filters": {"Modality": "DX", "StudyDate": "20250101-"}},
    )
    assert infer_filters(pacs, date(2026, 3, 1)) == ({"StudyDate": "20250101-"}, {"Modality": "DX"})


@pytest.mark.parametrize(
    ("sop_class", "expected"),
    [
        (ComputedRadiographyImageStorage, True),
        (CTImageStorage, True),
        (ComprehensiveSRStorage, False),
        (SegmentationStorage, False),
        (GrayscaleSoftcopyPresentationStateStorage, False),
        ("", False),
    ],
)
def test_only_images_are_sent(sop_class: str, expected: bool) -> None:
    assert _is_image(sop_class) is expected


def test_the_model_tag_is_read_from_the_services_wrong_task_detail() -> None:
    # as medflow.serving.service._check_task words it
    detail = "this Bento serves a segmentation model (medflow-segmenter:abc123): POST /segment"
    assert _TAG.search(detail).group(1) == "medflow-segmenter:abc123"


def test_the_infer_deployment_has_the_cron_and_the_data_change_trigger(tmp_path: Path) -> None:
    from medflow.orchestration.deployments import INFER, deployments, pacs_infer_deployment
    from medflow.orchestration.watch import EVENT

    o = OrchestrationParams()
    pacs = PacsParams(url="http://pacs/dicom-web", infer={"cron": "*/5 * * * *"})
    deployment = pacs_infer_deployment(tmp_path, pacs.infer, o)
    assert deployment.name == INFER and deployment.parameters == {"root": str(tmp_path)}
    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == "*/5 * * * *"
    (trigger,) = deployment.triggers
    assert trigger.expect == {EVENT} and trigger.match["medflow.root"] in (
        str(tmp_path),
        [str(tmp_path)],
    )

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({}))
    assert INFER not in [d.name for d in deployments(tmp_path)]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"pacs": {"url": "http://p/dw"}}))
    assert [d.name for d in deployments(tmp_path)][-1] == INFER
