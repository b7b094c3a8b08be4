"""The monitor's Prefect side without a server: its deployment, the training deployment's drift
trigger, the drift notification, the event payload, the artifact and the command's text."""

from pathlib import Path

import yaml

from medflow.cli.monitor import text
from medflow.config import MonitorParams, OrchestrationParams
from medflow.orchestration import monitor
from medflow.orchestration.deployments import (
    DRIFT_AUTOMATION,
    MONITOR,
    TRAIN,
    WATCH,
    deployments,
    drift_automation,
    monitor_deployment,
    training_deployment,
)
from medflow.orchestration.watch import EVENT as DATA_EVENT


def _summary(*models: dict, already: frozenset[tuple[str, str]] = frozenset()) -> dict:
    broken = [
        {
            "model_tag": m["model_tag"],
            "name": r["name"],
            "score": r["score"],
            "threshold": r["threshold"],
            "new": (m["model_tag"], r["name"]) not in already,
        }
        for m in models
        for r in m["rules"]
        if r["broken"]
    ]
    return {
        "run_at": "2026-11-30T12:00:00+00:00",
        "window": {
            "since": "2026-11-29T12:00:00+00:00",
            "until": "2026-11-30T12:00:00+00:00",
            "hours": 24.0,
        },
        "store": "sqlite:////srv/monitoring/predictions.sqlite",
        "predictions": sum(m["predictions"] for m in models),
        "models": list(models),
        "broken": broken,
        "notes": [],
        "report": "/srv/reports/monitor/report.html",
    }


def _model(tag: str, n: int, *broken: str) -> dict:
    rules = [
        {
            "name": name,
            "judged": name != "auroc_drop" or "auroc_drop" in broken,
            "broken": name in broken,
            "score": 0.5 if name in broken else 0.01,
            "threshold": 0.25,
            "detail": f"{name} detail | with a bar",
        }
        for name in ("manufacturer_mix", "intensity", "psi", "auroc_drop")
    ]
    if "auroc_drop" not in broken:
        rules[-1]["score"] = None
    return {
        "model_tag": tag,
        "predictions": n,
        "with_feedback": 0,
        "reference": "monitoring.json in the model store",
        "rules": rules,
    }


def test_the_training_deployment_keeps_its_data_trigger_and_adds_the_drift_one(
    tmp_path: Path,
) -> None:
    deployment = training_deployment(tmp_path, OrchestrationParams())
    on_data, on_drift = deployment.triggers
    assert on_data.expect == {DATA_EVENT} and on_data.parameters["data_hash"]
    assert on_drift.name == "retrain-on-drift" and on_drift.expect == {monitor.EVENT}
    match = on_drift.match.model_dump() if hasattr(on_drift.match, "model_dump") else on_drift.match
    assert match["prefect.resource.id"] in ("medflow.monitor.*", ["medflow.monitor.*"])
    assert match["medflow.root"] in (str(tmp_path), [str(tmp_path)])
    assert on_drift.parameters == {"root": str(tmp_path)}


def test_the_monitor_deployment(tmp_path: Path) -> None:
    deployment = monitor_deployment(
        tmp_path, MonitorParams(cron="*/30 * * * *"), OrchestrationParams()
    )
    assert deployment.name == MONITOR and deployment.parameters == {"root": str(tmp_path)}
    assert deployment.flow_name == "medflow-monitor"
    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == "*/30 * * * *"
    assert deployment.concurrency_limit == 1
    assert str(deployment.concurrency_options.collision_strategy).endswith("CANCEL_NEW")
    assert monitor_deployment(
        tmp_path, MonitorParams(cron=""), OrchestrationParams()
    ).schedules in (
        None,
        [],
    )

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({}))
    assert [d.name for d in deployments(tmp_path)] == [TRAIN, WATCH, MONITOR]


def test_the_drift_notification_listens_to_this_projects_events(tmp_path: Path) -> None:
    automation = drift_automation("00000000-0000-0000-0000-000000000001", tmp_path)
    assert automation.name == DRIFT_AUTOMATION
    trigger = automation.trigger
    assert trigger.expect == {monitor.EVENT}
    match = trigger.match.model_dump() if hasattr(trigger.match, "model_dump") else trigger.match
    assert match["medflow.root"] in (str(tmp_path), [str(tmp_path)])
    (action,) = automation.actions
    assert "event.payload.broken" in action.body and str(tmp_path / "reports") in action.body


def test_one_event_per_model_name_with_the_broken_rules_only() -> None:
    summary = _summary(
        _model("medflow-classifier:v1", 120, "psi"),
        _model("medflow-classifier:v2", 30, "intensity", "auroc_drop"),
        _model("other-model:v1", 200),
    )
    payloads = monitor.event_payloads(summary)
    assert list(payloads) == ["medflow-classifier"]  # other-model broke nothing
    payload = payloads["medflow-classifier"]
    assert payload["predictions"] == 150 and payload["window_hours"] == 24.0
    assert [(b["model_tag"], b["name"]) for b in payload["broken"]] == [
        ("medflow-classifier:v1", "psi"),
        ("medflow-classifier:v2", "intensity"),
        ("medflow-classifier:v2", "auroc_drop"),
    ]
    assert set(payload["broken"][0]) == {"model_tag", "name", "score", "threshold"}
    assert len(payload["newly_broken"]) == 3


def test_rules_broken_in_the_previous_run_too_emit_nothing_new() -> None:
    """A lasting shift asks for retraining once, not on every monitor run; a rule that breaks
    anew (or a new model tag) asks again, its payload naming every broken rule."""
    models = (
        _model("medflow-classifier:v1", 120, "psi", "intensity"),
        _model("other-model:v1", 50, "psi"),
    )
    again = {("medflow-classifier:v1", "psi"), ("medflow-classifier:v1", "intensity")}
    assert list(monitor.event_payloads(_summary(*models, already=frozenset(again)))) == [
        "other-model"
    ]
    partly = frozenset({("medflow-classifier:v1", "psi")})
    payload = monitor.event_payloads(_summary(*models, already=partly))["medflow-classifier"]
    assert payload["newly_broken"] == [{"model_tag": "medflow-classifier:v1", "name": "intensity"}]
    assert {b["name"] for b in payload["broken"]} == {"psi", "intensity"}


def test_the_artifact_and_the_command_show_the_rules() -> None:
    summary = _summary(_model("medflow-classifier:v1", 120, "psi"))
    md = monitor.markdown(summary)
    assert "**1 rule(s) broke.**" in md and "### medflow-classifier:v1" in md
    assert "| psi | **BROKEN** | 0.5 | 0.25 |" in md
    assert "| auroc_drop | not judged | - |" in md
    assert "with a bar" in md and "detail | with" not in md  # a cell cannot break the table

    summary["events"] = ["e1"]
    out = text(summary)
    assert "120 predictions from 2026-11-29T12:00 to 2026-11-30T12:00 UTC (24 h)" in out
    assert "psi               BROKEN 0.5 > 0.25" in out
    assert "auroc_drop        not judged: auroc_drop detail" in out
    assert out.endswith(
        "1 rule(s) broke, 1 of them newly: medflow.monitor.drift emitted (1 event(s))"
    )
