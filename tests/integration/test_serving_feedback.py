"""The prediction log, POST /feedback and medflow's /metrics of a real Bento, over HTTP.

The package stage builds a Bento of an untrained classifier; `bentoml serve` runs it with two
workers sharing one SQLite prediction log (in a temp folder, through
$MEDFLOW_SERVE_PREDICTION_LOG_URL) and an API token. Then the same Bento with the log off, and
with a log whose database cannot be created: predictions are answered either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pydicom.examples
import pytest
import sqlalchemy as sa

from medflow.config import PackageParams, PreprocessParams, ServeParams
from medflow.models.artifact import ModelSpec, save_model
from medflow.models.net import SmallCNN
from medflow.registry.infra_validation import InfraValidationFailed, RunningBento, serve_bento
from medflow.registry.packaging import run_package
from medflow.serving.prediction_log import KEY_ENV, engine_for, read_window, write_scores
from tests.helpers.handoffs import write_evaluated

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["normal", "lesion"]
TOKEN = "feedback-token-not-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PATIENT_NAME, PATIENT_ID = "Roe^Richard", "MRN-7731-SECRET"
UPLOAD_NAME = "Roe_Richard_MRN-7731-SECRET.dcm"  # clients name files after patients
MANUFACTURERS = ("ACME Imaging", "Globex Medical")
# the drift scores of a monitor run, in the store before the server starts
DRIFT = [
    {"model_tag": "", "name": "psi", "score": 0.42, "threshold": 0.25, "broken": True},
    {"model_tag": "", "name": "intensity", "score": 0.05, "threshold": 0.2, "broken": False},
]


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(bento tag, model tag) of a packaged untrained normal/lesion classifier."""
    tmp = tmp_path_factory.mktemp("pkg")
    spec = ModelSpec(
        architecture="SmallCNN",
        in_channels=1,
        num_classes=2,
        width=8,
        dropout=0.1,
        class_names=CLASSES,
        preprocess=PreprocessParams(image_size=32).model_dump(),
        provenance={"data_hash": "c" * 64, "git_rev": None},
    )
    save_model(tmp / "model", SmallCNN(1, 2, width=8), spec)
    write_evaluated(tmp, auroc=0.9, threshold=0.3)
    result = run_package(
        PackageParams(serve=ServeParams(allow_png_jpeg=True)),
        model_dir=tmp / "model",
        metrics_file=tmp / "metrics.json",
        gate_file=tmp / "gate.json",
        project_root=ROOT,
        out_file=tmp / "package.json",
    )
    return result.bento_tag, result.model_tag


@contextlib.contextmanager
def _serve(bento_tag: str, workdir: Path, env: dict[str, str]) -> Iterator[RunningBento]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDFLOW_SERVE_")}
    environ.pop(KEY_ENV, None)
    environ["MEDFLOW_API_TOKEN"] = TOKEN
    try:
        with serve_bento(bento_tag, workdir=workdir, timeout=90, env={**environ, **env}) as srv:
            yield srv
    except InfraValidationFailed as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store") / "predictions.sqlite"


@pytest.fixture(scope="module")
def server(
    bento: tuple[str, str], store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningBento]:
    """Two workers, one SQLite log holding a monitor run's scores already."""
    write_scores(
        engine_for(f"sqlite:///{store}"),
        datetime.now(UTC),
        [{**row, "model_tag": bento[1]} for row in DRIFT],
    )
    env = {"MEDFLOW_SERVE_PREDICTION_LOG_URL": f"sqlite:///{store}", "MEDFLOW_SERVE_WORKERS": "2"}
    with _serve(bento[0], tmp_path_factory.mktemp("serve"), env) as srv:
        yield srv


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """CT files of two manufacturers named after the patient, with their own UIDs; a PNG."""
    folder = tmp_path_factory.mktemp("files")
    paths = {}
    for i, manufacturer in enumerate(MANUFACTURERS):
        ds = pydicom.examples.ct
        ds.PatientName, ds.PatientID, ds.Manufacturer = PATIENT_NAME, PATIENT_ID, manufacturer
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        paths[f"ct{i}"] = folder / f"ct{i}" / UPLOAD_NAME
        paths[f"ct{i}"].parent.mkdir()
        ds.save_as(paths[f"ct{i}"])
    from PIL import Image

    paths["png"] = folder / "Roe_Richard.png"
    pixels = np.random.default_rng(0).integers(0, 256, (48, 80), dtype=np.uint8)
    Image.fromarray(pixels).save(paths["png"])
    return paths


def _predict(url: str, path: Path, headers: dict[str, str] = AUTH) -> httpx.Response:
    files = {"file": (path.name, path.read_bytes())}
    return httpx.post(f"{url}/predict", files=files, headers=headers, timeout=30)


def _feedback(url: str, headers: dict[str, str] = AUTH, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/feedback", json=body, headers=headers, timeout=30)


def _rows(store: Path, n: int) -> list[dict]:
    """The store's rows once it holds `n` (the workers write every 0.5 s)."""
    engine = engine_for(f"sqlite:///{store}")
    now = datetime.now(UTC)
    deadline = time.monotonic() + 20
    while len(frame := read_window(engine, now - timedelta(hours=1), now + timedelta(1))) < n:
        assert time.monotonic() < deadline, f"{len(frame)} of {n} rows in the prediction log"
        time.sleep(0.1)
    engine.dispose()
    return frame.to_dict("records")


def _hash_key(store: Path) -> bytes:
    with sa.create_engine(f"sqlite:///{store}").connect() as conn:
        return bytes.fromhex(conn.exec_driver_sql("SELECT value FROM meta").scalar_one())


def _metric(url: str, metric: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels on /metrics (0 when absent)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith((metric + "{", metric + " ")):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_each_prediction_is_logged_and_answers_its_id(
    server: RunningBento, bento: tuple[str, str], store: Path, files: dict[str, Path]
) -> None:
    before = {c: _metric(server.url, "medflow_predictions_total", label=c) for c in CLASSES}
    one = [_predict(server.url, files[f"ct{i % 2}"]) for i in range(6)]
    batch = httpx.post(
        f"{server.url}/predict_batch",
        files=[("files", (p.name, p.read_bytes())) for p in (files["ct0"], files["png"])],
        headers=AUTH,
        timeout=30,
    )
    answers = [r.json() for r in one] + batch.json()
    assert all(r.status_code == 200 for r in [*one, batch])
    ids = [a["prediction_id"] for a in answers]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == len(ids)

    # One key for both workers: the image hash of a file is the same whoever answered.
    key = _hash_key(store)
    uids = [str(pydicom.dcmread(files[f"ct{i}"]).SOPInstanceUID) for i in range(2)]
    png_sha = hashlib.sha256(files["png"].read_bytes()).hexdigest()
    expected = [uids[i % 2] for i in range(6)] + [uids[0], png_sha]
    for answer, message in zip(answers, expected, strict=True):
        assert answer["image_hash"] == hmac.new(key, message.encode(), "sha256").hexdigest()

    rows = {r["prediction_id"]: r for r in _rows(store, len(answers))}
    for i, answer in enumerate(answers):
        row = rows[answer["prediction_id"]]
        dicom = i != len(answers) - 1
        assert row["model_tag"] == bento[1] and row["image_hash"] == answer["image_hash"]
        assert row["route"] == ("/predict" if i < 6 else "/predict_batch")
        assert row["input_format"] == ("dicom" if dicom else "png")
        assert row["modality"] == ("CT" if dicom else "OT")
        manufacturer = MANUFACTURERS[i % 2] if i < 6 else MANUFACTURERS[0]
        assert row["manufacturer"] == (manufacturer if dicom else "")
        pre = answer["preprocessing"]
        assert [row["rows"], row["columns"]] == pre["original_shape"]
        assert (row["pixel_mean"], row["pixel_std"]) == (pre["pixel_mean"], pre["pixel_std"])
        assert row["probabilities"] == list(answer["probabilities"].values())
        assert row["class_names"] == CLASSES and row["threshold"] == 0.3
        assert (row["label_index"], row["label"]) == (answer["label_index"], answer["label"])
        assert 0 < row["latency_ms"] < 30_000

    # /metrics counts them per class, summed over both workers
    for c in CLASSES:
        made = sum(a["label"] == c for a in answers)
        assert _metric(server.url, "medflow_predictions_total", label=c) == before[c] + made


def test_feedback_over_http(server: RunningBento, bento: tuple[str, str], store: Path, files):
    first, second = (_predict(server.url, files["ct1"]).json() for _ in range(2))
    counted = _metric(server.url, "medflow_feedback_total", model_tag=bento[1])

    # at once, maybe from the other worker before this prediction is written
    resp = _feedback(server.url, prediction_id=first["prediction_id"], label="lesion")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "prediction_id": first["prediction_id"],
        "label": "lesion",
        "duplicate": False,
    }
    again = _feedback(server.url, prediction_id=first["prediction_id"], label=0)
    assert again.json() == {
        "prediction_id": first["prediction_id"],
        "label": "lesion",
        "duplicate": True,
    }
    by_hash = _feedback(server.url, image_hash=second["image_hash"], label=0)  # its latest
    assert by_hash.json() == {
        "prediction_id": second["prediction_id"],
        "label": "normal",
        "duplicate": False,
    }

    refused = {
        "unknown_prediction": _feedback(server.url, prediction_id="0" * 32, label=1),
        "unknown_label": _feedback(
            server.url, prediction_id=first["prediction_id"], label="tumour"
        ),
        "bad_field": _feedback(server.url, label=1),
        "missing_field": _feedback(server.url, prediction_id=first["prediction_id"]),
        "unauthorized": _feedback(server.url, headers={}, prediction_id="0" * 32, label=1),
        "not_json": httpx.post(f"{server.url}/feedback", data={"label": "1"}, headers=AUTH),
    }
    statuses = {code: r.status_code for code, r in refused.items()}
    assert statuses == {
        "unknown_prediction": 404,
        "unknown_label": 422,
        "bad_field": 400,
        "missing_field": 400,
        "unauthorized": 401,
        "not_json": 415,
    }
    assert {code: r.json()["error"] for code, r in refused.items()} == {c: c for c in refused}

    rows = {r["prediction_id"]: r for r in _rows(store, 1)}
    assert rows[first["prediction_id"]]["feedback_label_index"] == 1
    assert rows[second["prediction_id"]]["feedback_label_index"] == 0
    deadline = time.monotonic() + 10  # each worker serves its own count; /metrics sums them
    while _metric(server.url, "medflow_feedback_total", model_tag=bento[1]) != counted + 2:
        assert time.monotonic() < deadline, "medflow_feedback_total did not count 2 feedbacks"
        time.sleep(0.1)


def test_metrics_show_the_latest_drift_scores(server: RunningBento, bento: tuple[str, str]):
    for row in DRIFT:
        labels = {"model_tag": bento[1], "name": row["name"]}
        assert _metric(server.url, "medflow_drift_score", **labels) == row["score"]
        assert _metric(server.url, "medflow_drift_alarm", **labels) == float(row["broken"])
    assert "medflow_prediction_log_dropped_total 0.0" in httpx.get(f"{server.url}/metrics").text


def test_no_identifier_in_the_store_or_the_log(
    server: RunningBento, store: Path, files: dict[str, Path]
) -> None:
    answers = [_predict(server.url, files[name]).json() for name in ("ct0", "ct1", "png")]
    _feedback(server.url, prediction_id=answers[0]["prediction_id"], label=1)
    _rows(store, 3)
    secrets = [PATIENT_NAME, PATIENT_ID, "Roe_Richard", "MRN-7731"]
    for name in ("ct0", "ct1"):
        ds = pydicom.dcmread(files[name])
        secrets += [ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID]
    data = b"".join(p.read_bytes() for p in store.parent.glob("predictions.sqlite*"))
    assert not [s for s in secrets if s.encode() in data]
    log = server.log.read_text(errors="replace")
    ours = [a["prediction_id"] for a in answers] + [a["image_hash"] for a in answers]
    assert not [s for s in secrets + ours if s in log]
    assert "Traceback" not in log


def test_with_the_log_off_nothing_is_recorded(
    bento: tuple[str, str], files: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "off" / "predictions.sqlite"
    env = {
        "MEDFLOW_SERVE_PREDICTION_LOG": "false",
        "MEDFLOW_SERVE_PREDICTION_LOG_URL": f"sqlite:///{store}",
    }
    with _serve(bento[0], tmp_path / "serve", env) as srv:
        answer = _predict(srv.url, files["ct0"])
        assert answer.status_code == 200, answer.text
        assert (answer.json()["prediction_id"], answer.json()["image_hash"]) == (None, None)
        off = _feedback(srv.url, prediction_id="0" * 32, label=0)
        assert (off.status_code, off.json()["error"]) == (409, "prediction_log_off")
        label = answer.json()["label"]
        assert _metric(srv.url, "medflow_predictions_total", label=label) == 1
    assert not store.parent.exists()


def test_a_database_that_cannot_be_reached_fails_no_prediction(
    bento: tuple[str, str], files: dict[str, Path], tmp_path: Path
) -> None:
    """The log's folder cannot be created (a file is in the way): predictions are answered
    (without an image hash: the key is in the database), /feedback is a 503, and the worker
    says at shutdown how many rows it could not write."""
    (tmp_path / "blocked").write_text("a file where the log's folder would be")
    env = {"MEDFLOW_SERVE_PREDICTION_LOG_URL": f"sqlite:///{tmp_path / 'blocked' / 'p.sqlite'}"}
    with _serve(bento[0], tmp_path / "serve", env) as srv:
        answers = [_predict(srv.url, files["ct0"]) for _ in range(3)]
        assert [a.status_code for a in answers] == [200] * 3
        assert all(a.json()["prediction_id"] and a.json()["image_hash"] is None for a in answers)
        down = _feedback(srv.url, prediction_id=answers[0].json()["prediction_id"], label=0)
        assert (down.status_code, down.json()["error"]) == (503, "prediction_log_unavailable")
        assert down.headers["retry-after"] == "1"
    log = srv.log.read_text(errors="replace")
    assert "prediction log: database unavailable (FileExistsError)" in log
    assert "prediction log: 3 row(s) not written at shutdown" in log  # the shutdown hook ran
    uid = str(pydicom.dcmread(files["ct0"]).SOPInstanceUID)
    assert uid not in log and "Traceback" not in log
    assert json.loads(answers[0].text)["label"] in CLASSES
