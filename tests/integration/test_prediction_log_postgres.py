"""The prediction log on a real PostgreSQL (package.serve.prediction_log_url postgresql://...):
the same rows, feedback, retention and drift scores as on SQLite, through psycopg 3."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from medflow.serving.prediction_log import (
    PredictionLog,
    PredictionRow,
    latest_scores,
    read_window,
    write_scores,
)
from medflow.serving.prediction_store import feedback, insert_predictions, row_params
from tests.helpers import postgres

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    if reason := postgres.missing():
        pytest.skip(reason)
    with postgres.cluster("medflow", "medflow") as url:
        yield url


def _row(log: PredictionLog, uid: str, **changes: object) -> PredictionRow:
    fields: dict[str, object] = {
        "prediction_id": uuid.uuid4().hex,
        "created_at": datetime.now(UTC),
        "model_tag": "medflow-classifier:v1",
        "image_hash": log.image_hash(uid),
        "input_format": "dicom",
        "modality": "MR",
        "manufacturer": "",
        "rows": 256,
        "columns": 256,
        "pixel_mean": 812.0,
        "pixel_std": 99.5,
        "probabilities": [0.6, 0.4],
        "class_names": ["normal", "lesion"],
        "label_index": 1,
        "label": "lesion",
        "threshold": 0.35,
        "latency_ms": 7.0,
        "route": "/predict_batch",
    }
    return PredictionRow(**{**fields, **changes})  # type: ignore[arg-type]


def test_the_log_on_postgres(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDFLOW_MONITOR_KEY", raising=False)
    log, other_worker = (PredictionLog(url, retention_days=365) for _ in range(2))
    try:
        assert log.engine.url.drivername == "postgresql+psycopg"
        assert log.image_hash("1.2.3") == other_worker.image_hash("1.2.3")  # one stored key
        old = _row(log, "1.2.3", created_at=datetime.now(UTC) - timedelta(days=100))
        insert_predictions(log.engine, [row_params(old, None)])
        assert log.add_feedback(0, prediction_id=old.prediction_id) is not None
        rows = [_row(log, f"1.2.4.{i}") for i in range(3)]
        for row in rows:
            log.record(row)
        assert log.flush()

        got = other_worker.add_feedback(0, image_hash=rows[2].image_hash)
        assert got is not None and (got.prediction_id, got.duplicate) == (
            rows[2].prediction_id,
            False,
        )
        again = log.add_feedback(1, prediction_id=rows[2].prediction_id)
        assert again is not None and (again.label_index, again.duplicate) == (0, True)
        assert log.add_feedback(1, prediction_id="0" * 32, wait_s=0) is None

        now = datetime.now(UTC)
        frame = read_window(log.engine, now - timedelta(days=365), now)
        assert list(frame["prediction_id"]) == [old.prediction_id] + [r.prediction_id for r in rows]
        assert str(frame["created_at"].dt.tz) == "UTC"
        assert frame["probabilities"].iloc[1] == [0.6, 0.4]
        assert list(frame["feedback_label_index"].fillna(-1)) == [0, -1, -1, 0]

        # retention (90 days by default) deletes the old prediction and, first, its feedback
        purging = PredictionLog(url)
        try:
            purging.flush()
            deadline = datetime.now(UTC) + timedelta(seconds=10)
            while len(read_window(log.engine, now - timedelta(days=365), now)) != 3:
                assert datetime.now(UTC) < deadline, "retention did not delete the old row"
                time.sleep(0.05)
        finally:
            purging.close()
        with log.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar() == 1

        run = [{"model_tag": "m:1", "name": "psi", "score": 0.3, "threshold": 0.25, "broken": True}]
        write_scores(log.engine, now, run)
        assert latest_scores(log.engine) == run
    finally:
        log.close()
        other_worker.close()
