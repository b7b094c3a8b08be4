"""The monitoring loop, end to end: a served Bento logs its predictions, `medflow monitor`
judges them on a real `prefect server start`, and its drift event starts a training run.

The session's reproduced copy (conftest.py `reproduced`) is cloned; its Bento is served with
the prediction log in a temporary SQLite file, and the clone's deployments are served as
tests/integration/test_prefect_trigger.py serves them. Three monitor runs over one window:
1. unseen images of the training distribution (the synthetic generator, another seed): no
   rule broken, exit 0, no event, no training run;
2. then 300 from a new site (tests/helpers/shifted_site.py: another manufacturer and
   intensity calibration, other patients and UIDs): manufacturer_mix and intensity broken,
   exit 5, `medflow.monitor.drift` on the server, a run of `medflow-pipeline/train` created by
   that deployment's drift trigger, the alarm on the Bento's /metrics;
3. then wrong ground truth (1 - true label) through POST /feedback: the report's live AUROC
   far below the evaluated one, auroc_drop broken.
No identifier of an uploaded file (names, IDs, UIDs, file names) may reach the SQLite file,
the report folder, the Bento's log, the Prefect flow-run logs, artifacts or events.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from medflow.cli.common import ExitCode
from medflow.config import PackageParams, SynthParams
from medflow.data.synthetic import LABELS_FILE, run_synth
from medflow.registry.infra_validation import serve_bento, stop_process_group
from tests.helpers.pipeline_copy import clone, run, set_params
from tests.helpers.prefect_server import client_env, running_server
from tests.helpers.shifted_site import MANUFACTURER, leaks, shift_site, upload_identifiers

# the whole module; the session's reproduced pipeline too when this module sets it up
pytestmark = pytest.mark.timeout(900)

CLASSES = ["normal", "lesion"]
# 120 unseen images of the training distribution: more than monitor.min_predictions (100)
USUAL = SynthParams(n_patients=60, images_per_patient=2, seed=1001)
# the new site: 300 images of 150 other patients
SHIFTED = SynthParams(n_patients=150, images_per_patient=2, seed=2002)
N_FEEDBACK = 60  # wrong labels sent; monitor.min_feedback is 30
TOKEN = "monitoring-test-token"
EVENT = "medflow.monitor.drift"
TRAIN = "medflow-pipeline/train"
DRIFT_TRIGGER = "retrain-on-drift"
BATCH = 16  # package.serve.max_batch_size
MODEL_NAME = PackageParams().model_name


@dataclass(frozen=True)
class MonitorRun:
    """One `medflow monitor`: exit code, output, and the report it left."""

    code: int
    output: str
    report: dict[str, Any]
    html: str

    def rules(self) -> dict[str, dict[str, Any]]:
        """The rules of the one model tag in the window, by name."""
        (model,) = self.report["models"]
        return {r["name"]: r for r in model["rules"]}


@dataclass
class Loop:
    """What the scenario did and saw; the servers still run while the tests read it."""

    repo: Path
    api: str
    bento_url: str
    bento_log: Path
    log_dir: Path
    uploads: list[Path]
    n_usual: int
    n_shifted: int
    runs: list[MonitorRun] = field(default_factory=list)
    # (wrong label index sent, p(lesion) served) of the predictions given feedback
    feedback: list[tuple[int, float]] = field(default_factory=list)
    events_before_shift: list[dict] = field(default_factory=list)
    training_runs_before_shift: list[dict] = field(default_factory=list)
    shift_started: datetime | None = None
    drift_event: dict | None = None
    training_run: dict | None = None
    logs: dict[str, Path] = field(default_factory=dict)


def _wait(what: str, check: Callable[[], Any], timeout: float, procs=()) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args} exited {p.returncode} while waiting for {what}")
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _synth(params: SynthParams, dest: Path) -> pd.DataFrame:
    """Synthetic files (path, label index), each copied under a name of its own: the names
    a client uploads under are identifiers the system must not keep either."""
    run_synth(params, CLASSES, dest / "raw")
    labels = pd.read_csv(dest / "raw" / LABELS_FILE)
    rows = []
    for i, row in enumerate(labels.itertuples()):
        path = dest / f"lakeside-{params.seed}-{i:04d}-{os.urandom(4).hex()}.dcm"
        shutil.copy2(dest / "raw" / row.path, path)
        rows.append((path, CLASSES.index(row.label)))
    shutil.rmtree(dest / "raw")
    return pd.DataFrame(rows, columns=["path", "label"])


def _events(api: str, repo: Path) -> list[dict]:
    """The drift events of this project the server has stored."""
    page = httpx.post(
        f"{api}/events/filter",
        json={"filter": {"event": {"name": [EVENT]}}, "limit": 50},
        timeout=30,
    ).json()
    return [e for e in page["events"] if e["resource"].get("medflow.root") == str(repo)]


def _training_runs(api: str) -> list[dict]:
    """Runs of the training deployment an automation created (not the cron's future ones)."""
    deployment = httpx.get(f"{api}/deployments/name/{TRAIN}", timeout=30).json()["id"]
    runs = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flow_runs": {"deployment_id": {"any_": [deployment]}}},
        timeout=30,
    ).json()
    return [r for r in runs if (r.get("created_by") or {}).get("type") == "AUTOMATION"]


def _all(api: str, what: str) -> list[dict]:
    """Every object of a filter endpoint (logs, artifacts, flow_runs), page by page."""
    found: list[dict] = []
    while True:
        resp = httpx.post(
            f"{api}/{what}/filter", json={"limit": 200, "offset": len(found)}, timeout=60
        )
        resp.raise_for_status()
        found += resp.json()
        if len(resp.json()) < 200:
            return found


def _all_events(api: str) -> list[dict]:
    """Every event the server has stored (of the last day), following its next pages."""
    resp = httpx.post(f"{api}/events/filter", json={"limit": 50}, timeout=60)
    found: list[dict] = []
    while True:
        resp.raise_for_status()
        page = resp.json()
        found += page["events"]
        if not page["next_page"]:
            return found
        resp = httpx.get(page["next_page"], timeout=60)


def _monitor(repo: Path, env: dict[str, str]) -> MonitorRun:
    proc = run([sys.executable, "-m", "medflow.cli", "monitor"], repo, check=False, env=env)
    out = repo / "reports" / "monitor"
    summary, page = out / "monitor.json", out / "report.html"
    return MonitorRun(
        proc.returncode,
        proc.stdout + proc.stderr,
        json.loads(summary.read_text()) if summary.is_file() else {},
        page.read_text() if page.is_file() else "",
    )


@pytest.fixture(scope="module")
def loop(reproduced, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    tmp = tmp_path_factory.mktemp("monitoring")
    repo = clone(reproduced[0], tmp / "copy").resolve()
    # no hourly run of the served monitor deployment in the middle of the test (no stage
    # reads the monitor section: the clone's pipeline stays current)
    set_params(repo, {"monitor": {"cron": ""}})
    bento_tag = json.loads((repo / "reports" / "bento.json").read_text())["bento_tag"]
    usual = _synth(USUAL, tmp / "usual")
    run_synth(SHIFTED, CLASSES, tmp / "new-site-source")
    shifted = shift_site(
        sorted((tmp / "new-site-source").rglob("IM*")), tmp / "new-site", scale=4.0, offset=1000
    )
    shutil.rmtree(tmp / "new-site-source")

    log_dir = tmp / "prediction-log"
    # the Bento and the monitor both take the log's URL from this variable
    log_url = {"MEDFLOW_SERVE_PREDICTION_LOG_URL": f"sqlite:///{log_dir / 'predictions.sqlite'}"}
    with running_server(tmp / "prefect") as base:
        api = f"{base}/api"
        env = {
            **client_env(api, tmp / "client"),
            **log_url,
            "PREFECT_LOGGING_EXTRA_LOGGERS": "medflow",
            "PREFECT_RUNNER_POLL_FREQUENCY": "2",  # the runner looks for due runs every 2 s
        }
        serve_log = tmp / "deployments.log"
        with serve_log.open("w") as fh:
            serving = subprocess.Popen(
                [sys.executable, "-m", "medflow.orchestration.deployments", "serve",
                 "--root", str(repo)],
                cwd=repo, env=env, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True,  # stopping it also stops a flow run it started
            )  # fmt: skip
        try:
            bento_env = {**os.environ, **log_url, "MEDFLOW_API_TOKEN": TOKEN}
            with (
                serve_bento(bento_tag, workdir=tmp / "bento", env=bento_env) as bento,
                httpx.Client(
                    base_url=bento.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
                ) as client,
            ):
                state = Loop(
                    repo, api, bento.url, bento.log, log_dir, [*usual["path"], *shifted],
                    n_usual=len(usual), n_shifted=len(shifted),
                    logs={"deployments serve": serve_log},
                )  # fmt: skip
                # the deployments and their triggers must be there before the first event
                _wait("the drift trigger", lambda: any(
                    a["name"] == DRIFT_TRIGGER
                    for a in httpx.post(f"{api}/automations/filter", json={}).json()
                ), 120, [serving])  # fmt: skip

                # 1. the training distribution, one image per request
                predicted = []
                for path, label in usual.itertuples(index=False):
                    resp = client.post("/predict", files={"file": (path.name, path.read_bytes())})
                    assert resp.status_code == 200, resp.text
                    body = resp.json()
                    predicted.append((body["prediction_id"], label, body["probabilities"]))
                state.runs.append(_monitor(repo, env))
                state.events_before_shift = _events(api, repo)
                state.training_runs_before_shift = _training_runs(api)

                # 2. the new site, in batches
                state.shift_started = datetime.now(UTC)
                for i in range(0, len(shifted), BATCH):
                    files = [("files", (p.name, p.read_bytes())) for p in shifted[i : i + BATCH]]
                    resp = client.post("/predict_batch", files=files)
                    assert resp.status_code == 200, resp.text
                state.runs.append(_monitor(repo, env))
                events = _wait("the drift event", lambda: _events(api, repo), 60, [serving])
                state.drift_event = events[0]
                state.training_run = _wait(
                    "the triggered training run to start",
                    lambda: next((r for r in _training_runs(api)
                                  if r["state_type"] not in ("SCHEDULED", "PENDING")), None),
                    180,
                    [serving],
                )  # fmt: skip

                # 3. wrong ground truth for the first predictions
                for prediction_id, label, probabilities in predicted[:N_FEEDBACK]:
                    wrong = 1 - label
                    resp = client.post(
                        "/feedback", json={"prediction_id": prediction_id, "label": CLASSES[wrong]}
                    )
                    assert resp.status_code == 200, resp.text
                    assert resp.json()["duplicate"] is False, resp.text
                    state.feedback.append((wrong, probabilities[CLASSES[1]]))
                state.runs.append(_monitor(repo, env))
                yield state
        finally:
            stop_process_group(serving, timeout=60)


def test_the_training_distribution_raises_no_alarm(loop: Loop) -> None:
    first = loop.runs[0]
    assert first.code == ExitCode.OK, first.output
    (model,) = first.report["models"]
    assert model["predictions"] == loop.n_usual, first.output
    rules = first.rules()
    for name in ("manufacturer_mix", "intensity", "psi"):  # judged, and fine
        assert rules[name]["judged"] and not rules[name]["broken"], rules[name]
    assert rules["manufacturer_mix"]["score"] < 0.1, rules["manufacturer_mix"]
    assert not rules["auroc_drop"]["judged"], rules["auroc_drop"]  # no feedback yet
    assert first.report["broken"] == []
    assert loop.events_before_shift == [] and loop.training_runs_before_shift == []
    # nor did one arrive late: every drift event and triggered run came after the new site
    assert loop.shift_started is not None
    for e in _events(loop.api, loop.repo):
        assert datetime.fromisoformat(e["occurred"]) > loop.shift_started, e
    for r in _training_runs(loop.api):
        assert datetime.fromisoformat(r["created"]) > loop.shift_started, r


def test_a_new_site_raises_the_alarm_and_starts_training(loop: Loop) -> None:
    second = loop.runs[1]
    assert second.code == ExitCode.DRIFT, second.output
    (model,) = second.report["models"]
    n = loop.n_usual + loop.n_shifted
    assert model["predictions"] == n, second.output
    rules = second.rules()
    # the reference's three makers have a third each, the window's 40 each and the new one:
    # total variation distance = the new maker's share
    assert rules["manufacturer_mix"]["broken"], rules["manufacturer_mix"]
    assert rules["manufacturer_mix"]["score"] == pytest.approx(loop.n_shifted / n, abs=1e-3)
    assert rules["intensity"]["broken"] and rules["intensity"]["score"] > 2, rules["intensity"]
    shares = model["production_profile"]["manufacturer_fractions"]
    assert shares[MANUFACTURER] == pytest.approx(loop.n_shifted / n)

    # the event on the server, what it says, and the run its trigger created
    event = loop.drift_event
    assert event is not None
    assert event["resource"]["prefect.resource.id"] == f"medflow.monitor.{MODEL_NAME}"
    assert event["payload"]["predictions"] == n
    broken = {b["name"] for b in event["payload"]["broken"]}
    assert {"manufacturer_mix", "intensity"} <= broken, event["payload"]
    assert broken == {r["name"] for r in second.report["broken"]}
    automations = httpx.post(f"{loop.api}/automations/filter", json={}).json()
    (trigger,) = [a for a in automations if a["name"] == DRIFT_TRIGGER]
    assert EVENT in trigger["trigger"]["expect"]
    started = loop.training_run
    assert started is not None
    assert started["created_by"]["id"] == trigger["id"], started["created_by"]
    assert started["parameters"]["root"] == str(loop.repo)
    assert httpx.get(f"{loop.api}/deployments/{started['deployment_id']}").json()["name"] == "train"
    # with nothing new to train on, every stage is current: the run ends soon, completed
    done = _wait(
        "the triggered training run to end",
        lambda: next(
            (r for r in _training_runs(loop.api)
             if r["id"] == started["id"] and r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")),
            None,
        ),
        120,
    )  # fmt: skip
    assert done["state_type"] == "COMPLETED", done["state"]

    # the monitor's scores reach the Bento's /metrics (refreshed every ~30 s)
    def alarm() -> bool:
        text = httpx.get(f"{loop.bento_url}/metrics", timeout=10).text
        return any(
            line.startswith("medflow_drift_alarm{")
            and 'name="manufacturer_mix"' in line
            and line.rstrip().endswith(" 1.0")
            for line in text.splitlines()
        )

    _wait("the drift alarm on /metrics", alarm, 90)


def test_wrong_feedback_shows_the_live_auroc_drop(loop: Loop) -> None:
    from sklearn.metrics import roc_auc_score

    third = loop.runs[2]
    assert third.code == ExitCode.DRIFT, third.output
    (model,) = third.report["models"]
    assert model["with_feedback"] == N_FEEDBACK
    perf = model["performance"]
    assert perf["n_labelled"] == N_FEEDBACK
    auroc = perf["metrics"]["auroc"]
    evaluated = json.loads((loop.repo / "reports" / "metrics.json").read_text())["auroc"]
    assert auroc["evaluated"] == pytest.approx(evaluated)
    # the live AUROC is that of the labels sent against the probabilities served
    labels, probs = zip(*loop.feedback, strict=True)
    assert auroc["value"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-9)
    max_drop = third.report["params"]["monitor"]["max_auroc_drop"]
    # wrong labels: worse than chance, and surely below what evaluate measured
    assert auroc["value"] < 0.5 and auroc["ci_high"] < evaluated - max_drop, auroc
    rule = third.rules()["auroc_drop"]
    assert rule["judged"] and rule["broken"], rule
    assert rule["score"] == pytest.approx(evaluated - auroc["value"], abs=1e-5)
    # the page a person reads says so
    assert "auroc_drop" in third.html and f"{auroc['value']:.3f}" in third.html


def test_no_identifier_of_the_uploads_anywhere(loop: Loop) -> None:
    identifiers = upload_identifiers(loop.uploads)
    kinds = set(identifiers.values())
    assert {"PatientName", "PatientID", "SOPInstanceUID", "StudyInstanceUID", "file name"} <= kinds

    texts: dict[str, bytes] = {}
    store = sorted(loop.log_dir.iterdir())
    texts |= {f"prediction log {p.name}": p.read_bytes() for p in store}
    report = loop.repo / "reports" / "monitor"
    texts |= {
        f"report {p.relative_to(report)}": p.read_bytes() for p in report.rglob("*") if p.is_file()
    }
    texts["Bento server log"] = loop.bento_log.read_bytes()
    texts |= {name: path.read_bytes() for name, path in loop.logs.items()}
    texts |= {f"monitor run {i} output": r.output.encode() for i, r in enumerate(loop.runs)}
    logs = _all(loop.api, "logs")
    texts["Prefect flow-run logs"] = "\n".join(e["message"] for e in logs).encode()
    texts["Prefect artifacts"] = json.dumps(_all(loop.api, "artifacts")).encode()
    texts["Prefect flow runs"] = json.dumps(_all(loop.api, "flow_runs")).encode()
    events = _all_events(loop.api)
    texts["Prefect events"] = json.dumps(events).encode()

    # what is scanned holds what the system keeps: the rows, the monitor's flow-run logs
    blob = b"".join(v for k, v in texts.items() if k.startswith("prediction log"))
    assert MANUFACTURER.encode() in blob and b"lesion" in blob
    assert any(e["flow_run_id"] for e in logs) and b"predictions" in texts["Prefect flow-run logs"]
    assert b"monitor-report" in texts["Prefect artifacts"]
    assert any(e["event"] == EVENT for e in events)
    assert not leaks(texts, identifiers)
    # and the scan finds one where there is one
    uid = next(v for v, kind in identifiers.items() if kind == "SOPInstanceUID")
    assert leaks({"planted": b"x " + uid.encode() + b" y"}, identifiers) == [
        "planted: SOPInstanceUID"
    ]
