"""POST /feedback's checks and answers, recorded in a real SQLite prediction log."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from medflow.serving.errors import ServeError
from medflow.serving.feedback import give_feedback, label_index, target
from medflow.serving.prediction_log import PredictionLog, PredictionRow

CLASSES = ["normal", "lesion"]


@pytest.mark.parametrize(
    ("label", "expected"), [("lesion", 1), ("normal", 0), (1, 1), (0, 0), ("1", 1), (" 0 ", 0)]
)
def test_a_label_is_a_class_name_or_index(label: object, expected: int) -> None:
    assert label_index(label, CLASSES) == expected


@pytest.mark.parametrize("label", ["Lesion", "tumour", 2, -1, True, 1.0, None, [1], ""])
def test_an_unknown_label_is_a_422_naming_the_classes(label: object) -> None:
    with pytest.raises(ServeError) as caught:
        label_index(label, CLASSES)
    assert (caught.value.status, caught.value.code) == (422, "unknown_label")
    assert "0=normal, 1=lesion" in caught.value.detail


def test_the_prediction_is_named_by_exactly_one_key() -> None:
    assert target({"prediction_id": "a1", "label": 0}) == ("a1", None)
    assert target({"image_hash": "f0", "prediction_id": None}) == (None, "f0")
    for values, expected in [
        ({}, "neither"),
        ({"prediction_id": None, "image_hash": None}, "neither"),
        ({"prediction_id": "a", "image_hash": "b"}, "image_hash and prediction_id"),
        ({"prediction_id": 12}, "must be a string"),
        ({"image_hash": ""}, "must be a string"),
        ({"image_hash": "f" * 129}, "must be a string"),
    ]:
        with pytest.raises(ServeError) as caught:
            target(values)
        assert (caught.value.status, caught.value.code) == (400, "bad_field"), values
        assert expected in caught.value.detail, caught.value.detail


def _predicted(log: PredictionLog) -> PredictionRow:
    row = PredictionRow(
        prediction_id=uuid.uuid4().hex,
        created_at=datetime.now(UTC),
        model_tag="medflow-classifier:v7",
        image_hash=log.image_hash("1.2.3"),
        input_format="dicom",
        modality="CT",
        manufacturer="",
        rows=64,
        columns=64,
        pixel_mean=0.0,
        pixel_std=1.0,
        probabilities=[0.9, 0.1],
        class_names=CLASSES,
        label_index=0,
        label="normal",
        threshold=0.5,
        latency_ms=1.0,
        route="/predict",
    )
    log.record(row)
    return row


def test_feedback_is_recorded_once(tmp_path: Path) -> None:
    log = PredictionLog(f"sqlite:///{tmp_path / 'p.sqlite'}")
    try:
        row = _predicted(log)
        first, recorded = asyncio.run(
            give_feedback(log, {"prediction_id": row.prediction_id, "label": "lesion"}, CLASSES)
        )
        assert first.model_dump() == {
            "prediction_id": row.prediction_id,
            "label": "lesion",
            "duplicate": False,
        }
        assert recorded.model_tag == "medflow-classifier:v7"
        again, _ = asyncio.run(
            give_feedback(log, {"image_hash": row.image_hash, "label": 0}, CLASSES)
        )
        assert again.model_dump() == {
            "prediction_id": row.prediction_id,
            "label": "lesion",  # the first feedback stands
            "duplicate": True,
        }
    finally:
        log.close()


def test_with_the_log_off_feedback_is_a_409() -> None:
    with pytest.raises(ServeError) as off:
        asyncio.run(give_feedback(None, {"prediction_id": "a", "label": 0}, CLASSES))
    assert (off.value.status, off.value.code) == (409, "prediction_log_off")


def test_an_unknown_prediction_is_a_404(tmp_path: Path) -> None:
    log = PredictionLog(f"sqlite:///{tmp_path / 'p.sqlite'}")
    try:
        with pytest.raises(ServeError) as unknown:
            asyncio.run(give_feedback(log, {"prediction_id": "0" * 32, "label": 0}, CLASSES))
        assert (unknown.value.status, unknown.value.code) == (404, "unknown_prediction")
        assert "prediction_id" in unknown.value.detail and "0" * 32 not in unknown.value.detail
    finally:
        log.close()


def test_a_database_that_is_down_is_a_503(tmp_path: Path) -> None:
    (tmp_path / "in-the-way").write_text("a file where the log's folder would be")
    log = PredictionLog(f"sqlite:///{tmp_path / 'in-the-way' / 'p.sqlite'}")
    try:
        with pytest.raises(ServeError) as down:
            asyncio.run(give_feedback(log, {"prediction_id": "a" * 32, "label": 1}, CLASSES))
        assert (down.value.status, down.value.code) == (503, "prediction_log_unavailable")
        assert down.value.response().headers["retry-after"] == "1"
    finally:
        log.close()
