"""`medflow monitor`: the served model's recent predictions against its training data and its
evaluated performance (docs/monitoring.md), as one run of the Prefect flow medflow-monitor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medflow.cli.common import ExitCode
from medflow.stages.stage import ParamsOpt


def monitor(
    params: ParamsOpt = Path("params.yaml"),
    window_hours: Annotated[
        float | None,
        typer.Option(
            "--window-hours",
            min=0.001,
            help="compare the predictions of the last this many hours (default"
            " monitor.window_hours)",
        ),
    ] = None,
) -> None:
    """Compare the window's predictions (the prediction log the Bento writes) with the
    model's training data (validate's drift rules), its test-split predictions (PSI) and,
    where feedback came, its evaluated performance; write reports/monitor/ and emit
    medflow.monitor.drift when a rule breaks. Runs the flow medflow-monitor (on the server at
    PREFECT_API_URL, else an ephemeral one). Exit code 0, or 5 when a rule broke."""
    from medflow.orchestration.monitor import monitor_flow

    params = params.resolve()
    summary = monitor_flow(
        root=str(params.parent), window_hours=window_hours, params_file=str(params)
    )
    typer.echo(text(summary))
    if summary["broken"]:
        raise typer.Exit(code=int(ExitCode.DRIFT))


def text(summary: dict[str, Any]) -> str:
    """A few lines: the window and its counts, each model tag's rules, the report."""
    w = summary["window"]
    lines = [
        f"{summary['predictions']} predictions from {w['since'][:16]} to {w['until'][:16]} UTC"
        f" ({w['hours']:g} h), {len(summary['models'])} model tag(s)",
        *summary["notes"],
    ]
    for model in summary["models"]:
        lines.append(
            f"{model['model_tag']}: {model['predictions']} predictions,"
            f" {model['with_feedback']} with feedback"
        )
        for r in model["rules"]:
            if not r["judged"]:
                lines.append(f"  {r['name']:<17} not judged: {r['detail']}")
                continue
            verdict = "BROKEN" if r["broken"] else "ok"
            op = ">" if r["broken"] else "<="
            lines.append(f"  {r['name']:<17} {verdict:<6} {r['score']:.4g} {op} {r['threshold']:g}")
    lines.append(f"report: {summary['report']}")
    if summary["broken"]:
        events = len(summary.get("events", []))
        new = sum(b["new"] for b in summary["broken"])
        lines.append(
            f"{len(summary['broken'])} rule(s) broke, {new} of them newly:"
            f" medflow.monitor.drift emitted ({events} event(s))"
        )
    return "\n".join(lines)
