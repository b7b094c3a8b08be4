"""`medflow flow` (the Prefect pipeline) and `medflow orchestrate` (its deployments)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from medflow.cli.common import ExitCode, command
from medflow.config import load_params
from medflow.stages import STAGES


def _orchestrate(name: str) -> Callable[[Any], Any]:
    return lambda func: command(f"orchestrate {name}", func)


app = typer.Typer(
    no_args_is_help=True,
    help="Prefect deployments: scheduled and data-triggered training (docs/orchestration.md).",
)
RootOpt = Annotated[Path, typer.Option("--root", help="project root (params.yaml, dvc.yaml)")]


@app.command("serve")
@_orchestrate("serve")
def orchestrate_serve(root: RootOpt = Path(".")) -> None:
    """Register the training (cron + data-change and drift triggers, one at a time), watcher
    and monitor deployments, the PACS inference one when pacs.url is set (docs/pacs.md), and
    the failure and drift notifications if configured; serve them until Ctrl-C.
    Needs PREFECT_API_URL pointing at a server (make server)."""
    root = root.resolve()
    from medflow.orchestration.deployments import serve_all

    serve_all(root)


@app.command("register")
@_orchestrate("register")
def orchestrate_register(root: RootOpt = Path(".")) -> None:
    """Create the failure- and drift-notification automations from params
    orchestration.notify_block."""
    root = root.resolve()
    from medflow.orchestration.deployments import register_notifications

    name = register_notifications(load_params(root / "params.yaml").orchestration, root)
    typer.echo(f"automation: {name}" if name else "orchestration.notify_block is empty: none")


@app.command("watch")
@_orchestrate("watch")
def orchestrate_watch(root: RootOpt = Path(".")) -> None:
    """Hash data.source once; emit medflow.data.changed if it changed since the last look."""
    root = root.resolve()
    from medflow.orchestration.watch import watch_data

    state = watch_data(root=str(root), return_state=True)
    if not state.is_completed():
        raise typer.Exit(code=int(ExitCode.FAILED))


def flow(
    root: RootOpt = Path("."),
    stages: Annotated[
        list[str] | None,
        typer.Option(
            "--stage",
            help=f"run only this stage (repeat for several); one of: {', '.join(STAGES)}",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="run the stages DVC reports unchanged too")
    ] = False,
) -> None:
    """Run the pipeline as a Prefect flow, a task per stage.

    Stages DVC reports unchanged are skipped. Uses an ephemeral Prefect unless
    PREFECT_API_URL points at a server.
    """
    unknown = sorted(set(stages or ()) - set(STAGES))
    if unknown:
        raise typer.BadParameter(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    from medflow.orchestration.pipeline import pipeline

    state = pipeline(root=str(root), stages=stages, force=force, return_state=True)
    if not state.is_completed():
        raise typer.Exit(code=int(ExitCode.FAILED))
