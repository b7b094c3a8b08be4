"""The gate stage: judge the evaluated model against the gate's rules; write the model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medflow.config import Params, load_params
from medflow.stages.layout import Layout
from medflow.stages.stage import ParamsOpt, Stage


def gate(
    params: Params,
    metrics: Path,
    out: Path,
    *,
    subgroups: Path | None = None,
    baseline: Path | None = None,
    context: Path | None = None,
    card: Path | None = None,
) -> Any:
    """Judge `metrics` (value, subgroup and change rules); write the decision to `out`.

    Args:
        subgroups: evaluate's subgroups.json (subgroup rules).
        baseline: evaluate's baseline.json (change rules; absent: value rules only).
        context: evaluate's evaluation.json (for the model card).
        card: where to write the model card (written whether the model passes or not).

    Raises:
        GateFailed: the model is refused (the CLI exits with its own code).
    """
    from medflow.evaluation.gate import run_gate

    return run_gate(
        params.gate,
        metrics,
        out,
        subgroups_file=subgroups,
        baseline_file=baseline,
        context_file=context,
        card_file=card,
        task=params.data.task,
    )


def run(layout: Layout, params: Params) -> Any:
    """The stage on the project layout."""
    return gate(
        params,
        layout.metrics,
        layout.gate,
        subgroups=layout.subgroups,
        baseline=layout.baseline,
        context=layout.evaluation,
        card=layout.model_card,
    )


def command(
    metrics: Annotated[Path, typer.Argument(help="the evaluate stage's metrics.json")],
    out: Annotated[Path, typer.Argument(help="where to write the decision (gate.json)")],
    params: ParamsOpt = Path("params.yaml"),
    subgroups: Annotated[Path | None, typer.Option(help="the evaluate stage's subgroups")] = None,
    context: Annotated[
        Path | None, typer.Option(help="the evaluate stage's evaluation.json (model card)")
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="the evaluate stage's baseline.json (the champion on the same test split);"
            " absent: value rules only"
        ),
    ] = None,
    card: Annotated[Path | None, typer.Option(help="write the model card here")] = None,
) -> None:
    """Judge METRICS against the gate's rules; write the decision to OUT.

    Writes the model card too (--card), whether the model passes or not. Exits with code 4
    when the model is refused, so that nothing is packaged.
    """
    gate(
        load_params(params),
        metrics,
        out,
        subgroups=subgroups,
        baseline=baseline,
        context=context,
        card=card,
    )


STAGE = Stage("gate", run, command)
