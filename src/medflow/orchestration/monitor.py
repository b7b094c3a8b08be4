"""The Prefect flow `medflow-monitor`: one monitor run (medflow.monitor.run) on a project.

Its counts and rules are its result and the markdown artifact `monitor-report`; when a rule
breaks that the previous run did not find broken, it emits `medflow.monitor.drift` (resource
`medflow.monitor.<model name>`, the project's root; payload: the broken rules, those broken
anew, no identifier), which the training deployment's trigger and the drift notification
(medflow.orchestration.deployments) listen for.
`medflow monitor` runs this flow once; the deployment `medflow-monitor/monitor` on
monitor.cron.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from medflow.config import load_params
from medflow.monitor.run import MonitorResult, run_monitor
from medflow.serving.settings import resolve_serve_params
from medflow.stages.layout import Layout

EVENT = "medflow.monitor.drift"
RESOURCE_PREFIX = "medflow.monitor."
ARTIFACT = "monitor-report"
REPORT_DIR = "monitor"  # under the project's reports/


def report_dir(root: Path) -> Path:
    """Where a project's monitor report goes: reports/monitor/."""
    return Layout(Path(root)).reports / REPORT_DIR


def monitor_project(
    root: Path, params_file: Path | None = None, window_hours: float | None = None
) -> MonitorResult:
    """run_monitor with a project's params and its prediction log: package.serve's
    prediction_log_url, overridden by $MEDFLOW_SERVE_PREDICTION_LOG_URL as where the Bento
    runs (a relative SQLite path is from root).

    Raises:
        ValueError: the prediction log is turned off (nothing is recorded to monitor).
    """
    root = Path(root).resolve()
    params = load_params(params_file or Layout(root).params)
    serve = resolve_serve_params(params.package.serve.model_dump())
    if not serve.prediction_log:
        raise ValueError(
            "the prediction log is off (package.serve.prediction_log false, or"
            " $MEDFLOW_SERVE_PREDICTION_LOG): the Bento records nothing to monitor"
        )
    return run_monitor(
        params,
        serve.prediction_log_url,
        report_dir(root),
        root=root,
        window_hours=window_hours,
    )


# the task reads image hashes (in memory only): nothing of it is cached or persisted
@task(name="monitor-run", cache_policy=NO_CACHE, persist_result=False)
def _run(root: str, params_file: str | None, window_hours: float | None) -> dict[str, Any]:
    result = monitor_project(Path(root), Path(params_file) if params_file else None, window_hours)
    return result.summary()


@flow(name="medflow-monitor", persist_result=False)
def monitor_flow(
    root: str = ".", window_hours: float | None = None, params_file: str | None = None
) -> dict[str, Any]:
    """Compare the recent predictions with each model's training data and evaluated
    performance; publish the rules, and emit medflow.monitor.drift when one broke.

    Args:
        root: the project root (params.yaml; reports/monitor/ is written there).
        window_hours: instead of params monitor.window_hours.
        params_file: instead of root/params.yaml.
    """
    logger = get_run_logger()
    root = str(Path(root).resolve())
    summary = _run(root, params_file, window_hours)
    create_markdown_artifact(
        key=ARTIFACT, markdown=markdown(summary), description="medflow monitor: rules and counts"
    )
    summary["events"] = emit_drift_events(summary, root)
    broken = summary["broken"]
    logger.info(
        "%d predictions of %d model tag(s) in the window; %d rule(s) broke%s; report %s",
        summary["predictions"],
        len(summary["models"]),
        len(broken),
        "".join(f", {b['model_tag']} {b['name']}" for b in broken),
        summary["report"],
    )
    return summary


def event_payloads(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Model name -> the payload of its drift event: the broken rules of its tags (name,
    score, threshold), those that broke anew, and the window's counts. No identifier.

    Only a model with a rule that broke anew (not broken in the store's previous run) gets
    one: a lasting shift asks for retraining once, not on every monitor run."""
    found: dict[str, dict[str, Any]] = {}
    for model in summary["models"]:
        broken = [r for r in model["rules"] if r["broken"]]
        tag = model["model_tag"]
        new = [b["name"] for b in summary["broken"] if b["model_tag"] == tag and b["new"]]
        if not new:  # nothing broke, or only what the previous run reported already
            continue
        name = model["model_tag"].split(":", 1)[0]
        payload = found.setdefault(
            name,
            {
                "model": name,
                "window_hours": summary["window"]["hours"],
                "broken": [],
                "newly_broken": [],
                "predictions": 0,
            },
        )
        payload["predictions"] += model["predictions"]
        payload["newly_broken"] += [{"model_tag": tag, "name": n} for n in new]
        payload["broken"] += [
            {
                "model_tag": model["model_tag"],
                "name": r["name"],
                "score": r["score"],
                "threshold": r["threshold"],
            }
            for r in broken
        ]
    return found


def emit_drift_events(summary: dict[str, Any], root: str) -> list[str]:
    """Emit medflow.monitor.drift per model name with a broken rule; returns the event ids
    (an event the client could not send counts as none)."""
    from prefect.events import emit_event

    ids = []
    for name, payload in event_payloads(summary).items():
        event = emit_event(
            event=EVENT,
            resource={"prefect.resource.id": f"{RESOURCE_PREFIX}{name}", "medflow.root": root},
            payload=payload,
        )
        if event is not None:
            ids.append(str(event.id))
    return ids


def markdown(summary: dict[str, Any]) -> str:
    """The artifact: the window, then per model tag its counts and rules table."""
    w = summary["window"]
    lines = [
        "## medflow monitor",
        "",
        f"Window (UTC) {w['since']} to {w['until']} ({w['hours']:g} h):"
        f" {summary['predictions']} predictions. Report: `{summary['report']}`",
        "",
        f"**{len(summary['broken'])} rule(s) broke.**" if summary["broken"] else "No rule broke.",
    ]
    lines += [f"\n_{n}_" for n in summary["notes"]]
    for model in summary["models"]:
        lines += [
            "",
            f"### {model['model_tag']}",
            "",
            f"{model['predictions']} predictions, {model['with_feedback']} with feedback;"
            f" reference: {model['reference']}",
            "",
            "| rule | verdict | score | threshold | detail |",
            "|---|---|---|---|---|",
        ]
        for r in model["rules"]:
            verdict = "**BROKEN**" if r["broken"] else "ok" if r["judged"] else "not judged"
            score = "-" if r["score"] is None else f"{r['score']:.4g}"
            detail = str(r["detail"]).replace("|", "/")
            lines.append(f"| {r['name']} | {verdict} | {score} | {r['threshold']} | {detail} |")
    return "\n".join(lines) + "\n"
