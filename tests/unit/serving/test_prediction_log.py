"""The prediction log on real SQLite files: what a row holds, the keyed hash, feedback,
retention, drift scores, and a database that is down or refuses rows (predictions go on)."""

from __future__ import annotations

import hmac
import logging
import math
import sqlite3
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from medflow.serving.prediction_log import (
    KEY_ENV,
    LogUnavailable,
    PredictionLog,
    PredictionRow,
    database_url,
    engine_for,
    hash_message,
    image_hash,
    latest_scores,
    read_window,
    write_scores,
)
from medflow.serving.prediction_store import feedback, insert_predictions, row_params

UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"
CLASSES = ["normal", "lesion"]


def _row(log: PredictionLog, uid: str = UID, **changes: object) -> PredictionRow:
    fields: dict[str, object] = {
        "prediction_id": uuid.uuid4().hex,
        "created_at": datetime.now(UTC),
        "model_tag": "medflow-classifier:v1",
        "image_hash": log.image_hash(uid),
        "input_format": "dicom",
        "modality": "CT",
        "manufacturer": "ACME",
        "rows": 128,
        "columns": 96,
        "pixel_mean": -312.5,
        "pixel_std": 401.25,
        "probabilities": [0.25, 0.75],
        "class_names": CLASSES,
        "label_index": 1,
        "label": "lesion",
        "threshold": 0.3,
        "latency_ms": 4.5,
        "route": "/predict",
    }
    fields.update(changes)
    if fields["image_hash"] is None:
        fields["hash_source"] = uid
    return PredictionRow(**fields)  # type: ignore[arg-type]


def _window(engine: sa.Engine, model_tag: str | None = None):
    now = datetime.now(UTC)
    return read_window(engine, now - timedelta(days=400), now + timedelta(minutes=1), model_tag)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'monitoring' / 'predictions.sqlite'}"


@pytest.fixture
def log(url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    log = PredictionLog(url)
    yield log
    log.close()


def test_a_relative_sqlite_path_is_under_root_and_postgres_runs_on_psycopg(tmp_path: Path):
    assert database_url("sqlite:///monitoring/p.sqlite", tmp_path).database == str(
        tmp_path / "monitoring" / "p.sqlite"
    )
    assert database_url("sqlite:////abs/p.sqlite", tmp_path).database == "/abs/p.sqlite"
    pg = database_url("postgresql://medflow@db.local:5432/medflow")
    assert (pg.drivername, pg.host, pg.database) == ("postgresql+psycopg", "db.local", "medflow")
    engine = engine_for("sqlite:///monitoring/p.sqlite", tmp_path)
    assert (tmp_path / "monitoring" / "p.sqlite").is_file()  # the folder was created
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    names = set(sa.inspect(engine).get_table_names())
    assert names == {"predictions", "feedback", "drift_scores", "meta"}


def test_recorded_rows_are_read_back_with_their_feedback(log: PredictionLog, url: str) -> None:
    rows = [_row(log, f"1.2.3.{i}", label_index=i % 2, label=CLASSES[i % 2]) for i in range(5)]
    rows.append(_row(log, "1.2.3.9", model_tag="medflow-classifier:v2", threshold=None))
    for row in rows:
        log.record(row)
    assert log.flush()
    assert log.add_feedback(0, prediction_id=rows[1].prediction_id) is not None

    got = _window(log.engine)
    assert list(got["prediction_id"]) == [r.prediction_id for r in rows]
    first = got.iloc[0]
    assert first["probabilities"] == [0.25, 0.75] and first["class_names"] == CLASSES
    assert (first["rows"], first["columns"], first["pixel_mean"]) == (128, 96, -312.5)
    assert str(got["created_at"].dt.tz) == "UTC"
    assert abs(got["created_at"].iloc[0] - rows[0].created_at) < timedelta(milliseconds=1)
    assert got["feedback_label_index"].iloc[1] == 0.0
    assert got["feedback_label_index"].drop(index=1).isna().all()
    assert math.isnan(got["threshold"].iloc[-1])
    assert len(_window(log.engine, "medflow-classifier:v2")) == 1
    # the window is (since, until]
    at = rows[0].created_at
    assert rows[0].prediction_id not in set(
        read_window(log.engine, at, at + timedelta(1))["prediction_id"]
    )
    assert list(read_window(log.engine, at - timedelta(1), at)["prediction_id"]) == [
        rows[0].prediction_id
    ]


def test_the_hash_is_keyed_and_no_uid_is_stored(url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    first, second = PredictionLog(url), PredictionLog(url)  # two workers: one key
    try:
        assert first.image_hash(UID) == second.image_hash(UID)
        assert first.image_hash(UID) != image_hash(b"another key", UID)
        first.record(_row(first))
        assert first.flush()
    finally:
        first.close()
        second.close()
    monkeypatch.setenv(KEY_ENV, "site-key-not-secret")
    keyed = PredictionLog(url)
    try:
        expected = hmac.new(b"site-key-not-secret", UID.encode(), "sha256").hexdigest()
        assert keyed.image_hash(UID) == expected
    finally:
        keyed.close()
    path = Path(database_url(url).database)
    data = path.read_bytes() + b"".join(p.read_bytes() for p in path.parent.glob("*-wal"))
    assert UID.encode() not in data
    assert hash_message(None, b"png bytes") != hash_message(None, b"other bytes")
    assert hash_message(UID, b"png bytes") == UID


def test_feedback_counts_once_and_names_the_latest_image_prediction(log: PredictionLog):
    older = _row(log, created_at=datetime.now(UTC) - timedelta(hours=1))
    latest = _row(log)
    other = _row(log, "1.2.3.4")
    for row in (older, latest, other):
        log.record(row)

    got = log.add_feedback(1, image_hash=log.image_hash(UID))
    assert got is not None
    assert (got.prediction_id, got.model_tag) == (latest.prediction_id, latest.model_tag)
    assert (got.label_index, got.duplicate) == (1, False)
    again = log.add_feedback(0, prediction_id=latest.prediction_id)
    assert again is not None and (again.label_index, again.duplicate) == (1, True)
    assert log.add_feedback(0, prediction_id="0" * 32, wait_s=0.05) is None
    assert log.add_feedback(0, image_hash="f" * 64, wait_s=0.05) is None
    with log.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar() == 1


def test_feedback_finds_a_prediction_another_worker_has_not_written_yet(url: str) -> None:
    """Worker A writes every 0.8 s; B's feedback misses, asks again and finds it."""
    a = PredictionLog(url, interval_s=0.8)
    b = PredictionLog(url)
    try:
        time.sleep(0.9)  # A's first (empty) write is past: its next one is 0.8 s away
        row = _row(a)
        a.record(row)
        got = b.add_feedback(0, prediction_id=row.prediction_id)
        assert got is not None and got.prediction_id == row.prediction_id
    finally:
        a.close()
        b.close()


def test_a_database_that_is_down_never_fails_a_prediction(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log's folder cannot be created (a file is in the way): record() still returns at
    once, the oldest rows beyond the bound are dropped and counted, one warning names the
    counts (and no identifier); once the database can be created, what waited is written,
    hashed with the store's key."""
    blocker = tmp_path / "monitoring"
    blocker.write_text("not a folder")
    url = f"sqlite:///{blocker / 'predictions.sqlite'}"
    dropped: list[int] = []
    caplog.set_level(logging.WARNING, logger="medflow.serving.prediction_log")
    log = PredictionLog(url, max_queue=5, on_dropped=dropped.append)
    try:
        assert log.image_hash(UID) is None  # no key yet: the row keeps the UID in memory
        rows = [_row(log, f"1.2.9.{i}") for i in range(8)]
        started = time.perf_counter()
        for row in rows:
            log.record(row)
        assert time.perf_counter() - started < 0.05
        assert not log.flush(timeout=2)
        assert (log.dropped, sum(dropped)) == (3, 3)
        with pytest.raises(LogUnavailable):
            log.add_feedback(0, prediction_id=rows[-1].prediction_id)
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1, warnings  # once a minute at most, though it failed again
        assert "database unavailable (FileExistsError)" in warnings[0]

        blocker.unlink()  # the database can be created now
        assert log.flush(timeout=10)
        got = _window(log.engine)
        assert list(got["prediction_id"]) == [r.prediction_id for r in rows[3:]]
        assert list(got["image_hash"]) == [log.image_hash(f"1.2.9.{i}") for i in range(3, 8)]
        back = caplog.records[-1].getMessage()
        assert "reachable again" in back and "5 row(s) written now, 3 dropped" in back
        logged = " ".join(r.getMessage() for r in caplog.records)
        secrets = [r.prediction_id for r in rows] + list(got["image_hash"])
        assert not [s for s in secrets if s in logged]
        assert "1.2.9." not in logged and str(tmp_path) not in logged
    finally:
        log.close()


def test_a_row_the_database_refuses_does_not_block_the_others(log: PredictionLog) -> None:
    row = _row(log)
    log.record(row)
    assert log.flush()
    others = [_row(log, f"1.2.7.{i}") for i in range(3)]
    for r in (others[0], row, *others[1:]):  # the same prediction_id again
        log.record(r)
    assert log.flush()
    assert log.dropped == 1
    assert len(_window(log.engine)) == 4


def test_close_writes_what_waits(url: str) -> None:
    log = PredictionLog(url, interval_s=30)
    rows = [_row(log, f"1.2.8.{i}") for i in range(20)]
    for row in rows:
        log.record(row)
    log.close()
    assert len(_window(engine_for(url))) == 20


def test_two_workers_write_to_one_file_at_once(url: str) -> None:
    logs = [PredictionLog(url, batch_rows=10, interval_s=0.05) for _ in range(2)]

    def produce(log: PredictionLog) -> None:
        for i in range(300):
            log.record(_row(log, f"1.2.6.{i}"))

    threads = [threading.Thread(target=produce, args=(log,)) for log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        assert log.flush(timeout=20)
        log.close()
    assert len(_window(engine_for(url))) == 600


def test_retention_deletes_old_predictions_and_their_feedback(url: str, log: PredictionLog):
    old = _row(log, created_at=datetime.now(UTC) - timedelta(days=3))
    new = _row(log, "1.2.5.1")
    insert_predictions(log.engine, [row_params(old, None), row_params(new, None)])
    assert log.add_feedback(1, prediction_id=old.prediction_id) is not None
    purging = PredictionLog(url, retention_days=2)
    try:
        deadline = time.monotonic() + 5
        while len(_window(log.engine)) != 1:
            assert time.monotonic() < deadline, "the old prediction was not deleted"
            time.sleep(0.05)
        assert list(_window(log.engine)["prediction_id"]) == [new.prediction_id]
        with log.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar() == 0
    finally:
        purging.close()


def test_drift_scores_of_each_model_s_latest_run_reach_on_scores(url: str, log: PredictionLog):
    now = datetime.now(UTC)
    psi = {"model_tag": "m:1", "name": "psi", "threshold": 0.25}
    write_scores(log.engine, now - timedelta(hours=1), [{**psi, "score": 0.1, "broken": False}])
    write_scores(
        log.engine,
        now,
        [
            {**psi, "score": 0.4, "broken": True},
            {
                "model_tag": "m:1",
                "name": "intensity",
                "score": 0.0,
                "threshold": 0.2,
                "broken": False,
            },
        ],
    )
    write_scores(
        log.engine,
        now - timedelta(hours=2),
        [{**psi, "model_tag": "m:0", "score": 0.2, "broken": False}],
    )
    expected = sorted(
        [
            {**psi, "score": 0.4, "broken": True},
            {
                "model_tag": "m:1",
                "name": "intensity",
                "score": 0.0,
                "threshold": 0.2,
                "broken": False,
            },
            {**psi, "model_tag": "m:0", "score": 0.2, "broken": False},
        ],
        key=str,
    )
    assert sorted(latest_scores(log.engine), key=str) == expected
    seen: list[list[dict]] = []
    reader = PredictionLog(url, scores_every_s=0.1, on_scores=seen.append)
    try:
        deadline = time.monotonic() + 5
        while not seen:
            assert time.monotonic() < deadline, "on_scores was never called"
            time.sleep(0.05)
        assert sorted(seen[0], key=str) == expected
        assert sorted(reader.latest_scores(), key=str) == expected
    finally:
        reader.close()
    with pytest.raises(ValueError, match="lacks"):
        write_scores(log.engine, now, [{"model_tag": "m:1", "name": "psi"}])


def test_record_costs_microseconds(log: PredictionLog) -> None:
    """The request path's share (hash, row, enqueue) is far inside the 0.5 ms budget."""
    costs = []
    for i in range(2000):
        started = time.perf_counter()
        log.record(_row(log, f"1.2.4.{i}"))
        costs.append(time.perf_counter() - started)
    assert statistics.median(costs) < 100e-6, statistics.median(costs)
    assert log.flush(timeout=20)


def test_the_sqlite_file_holds_rows_other_processes_read(log: PredictionLog) -> None:
    """A plain sqlite3 reader (as the monitor's process) sees the rows while workers write."""
    log.record(_row(log))
    assert log.flush()
    path = database_url(log.url).database
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone() == (1,)
