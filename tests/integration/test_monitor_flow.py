"""The flow medflow-monitor and `medflow monitor` on the session's Prefect server: a real SQLite
prediction log (written through medflow.serving.prediction_log), real model store entries, the
artifact, the drift event on the server, the exit codes, and no identifier in any of it; the
drift notification on a real `prefect server start` (automations need its services); the log
on a real PostgreSQL.
(The whole loop with a served Bento and a training run: test_monitoring.py.)"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from medflow.cli import app
from medflow.cli.common import ExitCode
from medflow.config import OrchestrationParams
from medflow.orchestration.deployments import DRIFT_AUTOMATION, register_notifications
from medflow.orchestration.monitor import (
    ARTIFACT,
    EVENT,
    RESOURCE_PREFIX,
    monitor_flow,
    monitor_project,
)
from medflow.registry.infra_validation import free_port
from tests.helpers import postgres
from tests.helpers.monitoring import (
    MODEL_NAME,
    SHIFTED,
    TRAINING,
    Logged,
    log_predictions,
    reference,
    store_model,
)
from tests.helpers.prefect_server import running_server

URL = "sqlite:///monitoring/predictions.sqlite"  # params' default: relative to the project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("MEDFLOW_SERVE_PREDICTION_LOG", "MEDFLOW_SERVE_PREDICTION_LOG_URL"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"n_bootstrap": 200}}))
    return root


def _server_view(flow_run_id) -> tuple[str, dict[str, str], dict]:
    """The run's logs (read until the summary line arrives, or 30 s), artifacts and record."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            if any("rule(s) broke" in log.message for log in logs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        run = client.read_flow_run(flow_run_id)
    return (
        "\n".join(log.message for log in logs),
        {a.key: str(a.data) for a in artifacts},
        run.model_dump(mode="json"),
    )


def _drift_events(root: Path) -> list[dict]:
    from prefect.settings import PREFECT_API_URL

    page = httpx.post(
        f"{PREFECT_API_URL.value()}/events/filter",
        json={"filter": {"event": {"name": [EVENT]}}, "limit": 50},
        timeout=30,
    ).json()
    return [e for e in page["events"] if e["resource"].get("medflow.root") == str(root)]


def _secrets(*logged: Logged) -> list[str]:
    return [v for lg in logged for v in (*lg.prediction_ids, *lg.image_hashes)]


def test_the_flow_publishes_the_rules_and_emits_the_drift_event(prefect_server, project) -> None:
    tag = store_model(reference(auroc=0.8))
    now = datetime.now(UTC)
    usual = log_predictions(URL, project, tag, 150, TRAINING, at=now, seed=1, feedback="right")
    new_site = log_predictions(URL, project, tag, 300, SHIFTED, at=now, seed=2, feedback="wrong")

    state = monitor_flow(root=str(project), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["predictions"] == 450
    broken = {b["name"] for b in summary["broken"]}
    assert broken == {"manufacturer_mix", "intensity", "psi", "auroc_drop"}
    assert len(summary["events"]) == 1

    # the event on the server: this project's model, the broken rules, no identifier
    def events() -> list[dict]:
        return _drift_events(project)

    deadline = time.monotonic() + 60
    while not events() and time.monotonic() < deadline:
        time.sleep(1)
    (event,) = events()
    assert event["id"] == summary["events"][0]
    assert event["resource"]["prefect.resource.id"] == f"medflow.monitor.{MODEL_NAME}"
    assert event["payload"]["predictions"] == 450 and event["payload"]["window_hours"] == 24
    assert {b["name"] for b in event["payload"]["broken"]} == broken
    assert {b["model_tag"] for b in event["payload"]["broken"]} == {tag}

    logs, artifacts, run = _server_view(state.state_details.flow_run_id)
    assert run["parameters"] == {"root": str(project), "window_hours": None, "params_file": None}
    artifact = artifacts[ARTIFACT]
    assert "**4 rule(s) broke.**" in artifact and "| psi | **BROKEN** |" in artifact
    assert "450 predictions of 1 model tag(s) in the window; 4 rule(s) broke" in logs
    assert (project / "reports" / "monitor" / "report.html").is_file()

    text = "\n".join([logs, *artifacts.values(), json.dumps(run), json.dumps(event), str(summary)])
    leaked = [v for v in _secrets(usual, new_site) if v in text]
    assert not leaked, "prediction ids or image hashes in the flow's outputs"


def test_the_command_exits_0_5_or_1(prefect_server, project) -> None:
    params = str(project / "params.yaml")
    missing = CliRunner().invoke(app, ["monitor", "--params", params])
    assert missing.exit_code == ExitCode.FAILED, missing.output
    assert "no prediction log at" in missing.output and "serve the Bento first" in missing.output

    tag = store_model(reference())
    now = datetime.now(UTC)
    log_predictions(URL, project, tag, 150, TRAINING, at=now, seed=3)
    fine = CliRunner().invoke(app, ["monitor", "--params", params])
    assert fine.exit_code == ExitCode.OK, fine.output
    assert "150 predictions from" in fine.output and "BROKEN" not in fine.output
    assert f"report: {project / 'reports' / 'monitor' / 'report.html'}" in fine.output
    assert _drift_events(project) == []

    log_predictions(URL, project, tag, 300, SHIFTED, at=now, seed=4)
    alarm = CliRunner().invoke(app, ["monitor", "--params", params, "--window-hours", "2"])
    assert alarm.exit_code == ExitCode.DRIFT == 5, alarm.output
    assert "(2 h)" in alarm.output
    assert "manufacturer_mix  BROKEN" in alarm.output and "intensity         BROKEN" in alarm.output
    assert "of them newly: medflow.monitor.drift emitted (1 event(s))" in alarm.output


class _Webhook(BaseHTTPRequestHandler):
    """Records every POST body: where the notification block sends its messages."""

    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_drift_event_notifies_through_the_configured_block(tmp_path: Path) -> None:
    """orchestration.notify_block: a drift event of this project sends one message naming the
    broken rules; another project's event does not."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events import Event
    from prefect.settings import PREFECT_API_URL, temporary_settings

    webhook = HTTPServer(("127.0.0.1", free_port()), _Webhook)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    root = tmp_path / "project"
    payload = {
        "model": "medflow-classifier",
        "window_hours": 24.0,
        "predictions": 420,
        "broken": [
            {"model_tag": "medflow-classifier:v1", "name": "psi", "score": 0.51, "threshold": 0.25}
        ],
    }
    resource = {"prefect.resource.id": f"{RESOURCE_PREFIX}medflow-classifier"}
    try:
        with (
            running_server(tmp_path / "prefect") as base,
            temporary_settings({PREFECT_API_URL: f"{base}/api"}),
        ):
            CustomWebhookNotificationBlock(
                name="medflow-test",
                url=f"http://127.0.0.1:{webhook.server_port}/alarm",
                json_data={"subject": "{{subject}}", "body": "{{body}}"},
                allow_private_urls=True,
            ).save("medflow-test")
            o = OrchestrationParams(notify_block="custom-webhook/medflow-test")
            register_notifications(o, root)
            from prefect.automations import Automation

            assert Automation.read(name=DRIFT_AUTOMATION).enabled
            time.sleep(5)  # the server loads new automations every few seconds

            # posted to this server (the process's events worker may still be bound to the
            # session's other Prefect server): another project's event, then this one's
            for where in (tmp_path / "another-project", root):
                event = Event(
                    event=EVENT, resource={**resource, "medflow.root": str(where)}, payload=payload
                )
                response = httpx.post(
                    f"{base}/api/events", json=[event.model_dump(mode="json")], timeout=30
                )
                assert response.status_code < 300, response.text
            deadline = time.monotonic() + 90
            while not _Webhook.received and time.monotonic() < deadline:
                time.sleep(1)
            time.sleep(5)  # a second message, if one came, arrives too
    finally:
        webhook.shutdown()
    (message,) = _Webhook.received
    assert message["subject"] == "medflow: drift alarm for medflow-classifier"
    assert "1 rule(s) broke for medflow-classifier (420 predictions in 24.0 h)" in message["body"]
    assert "- medflow-classifier:v1: psi 0.51 (threshold 0.25)" in message["body"]
    assert str(root / "reports" / "monitor" / "report.html") in message["body"]


def test_the_log_on_postgres_named_by_the_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$MEDFLOW_SERVE_PREDICTION_LOG_URL, as where the Bento runs, names a PostgreSQL log; an
    unreachable one is named without its password."""
    from medflow.monitor.run import MonitorError
    from medflow.serving.prediction_log import engine_for, latest_scores

    if reason := postgres.missing():
        pytest.skip(reason)
    tag = store_model(reference())
    now = datetime.now(UTC)
    with postgres.cluster("medflow", "medflow") as url:
        log_predictions(url, project, tag, 120, TRAINING, at=now, seed=5)
        log_predictions(url, project, tag, 240, SHIFTED, at=now, seed=6)
        monkeypatch.setenv("MEDFLOW_SERVE_PREDICTION_LOG_URL", url)
        result = monitor_project(project)
        assert result.summary()["predictions"] == 360
        assert {r.name for _, r in result.broken} == {"manufacturer_mix", "intensity", "psi"}
        scores = latest_scores(engine_for(url))
        assert {r["name"]: r["broken"] for r in scores} == {
            "manufacturer_mix": True,
            "intensity": True,
            "psi": True,
            "auroc_drop": False,
        }
        assert not (project / "monitoring").exists()  # the params' SQLite default is not used

    down = f"postgresql://medflow:not-this-password@127.0.0.1:{free_port()}/medflow"
    monkeypatch.setenv("MEDFLOW_SERVE_PREDICTION_LOG_URL", down)
    with pytest.raises(MonitorError, match=r"postgresql://medflow:\*\*\*@127.0.0.1") as exc:
        monitor_project(project)
    assert "not-this-password" not in str(exc.value)
