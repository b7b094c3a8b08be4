"""The `medflow` console script: a command per stage (from medflow.stages), the Prefect
flow, the model registry, the Prefect deployments and the monitor."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from medflow import __version__
from medflow.cli import models, monitor, orchestrate, pacs
from medflow.cli.common import ExitCode, command
from medflow.stages import STAGES

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="medflow: DICOM in; de-identified data, a gated model and a Bento out.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medflow {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """medflow: DICOM in; de-identified data, a gated model and a Bento out."""


for _stage in STAGES.values():
    app.command(_stage.name, help=_stage.command.__doc__)(command(_stage.name, _stage.command))

app.command("flow")(command("flow", orchestrate.flow))
app.add_typer(models.app, name="models")
app.add_typer(orchestrate.app, name="orchestrate")
app.command("receive")(command("receive", pacs.receive))
app.command("infer")(command("infer", pacs.infer))
app.command("monitor")(command("monitor", monitor.monitor))


@app.command("show-bento")
def show_bento(
    report: Annotated[Path, typer.Argument(help="the package stage's report")] = Path(
        "reports/bento.json"
    ),
) -> None:
    """Print the Bento the last package stage built and how to serve it."""
    if not report.is_file():
        typer.secho(f"no {report}: run the pipeline first (make run)", fg="red", err=True)
        raise typer.Exit(code=int(ExitCode.FAILED))
    built = json.loads(report.read_text())
    tag = built["bento_tag"]
    home = os.environ.get("BENTOML_HOME", "~/bentoml")
    segments = (built.get("metrics") or {}).get("task") == "segmentation"
    route = "segment" if segments else "predict"
    typer.echo(
        f"Bento built: {tag}\n"
        f"Serve it:    bentoml serve {tag}   (with BENTOML_HOME={home})\n"
        f"Then:        curl -F file=@image.dcm http://127.0.0.1:3000/{route}"
        + ("\n             (-H 'Accept: application/dicom' for a DICOM SEG)" if segments else "")
    )


def main() -> None:  # pragma: no cover
    """The console script."""
    app(prog_name="medflow")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
