"""The package stage: the model into the BentoML store, its Bento built, the champion set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medflow.config import Params, load_params
from medflow.stages.layout import Layout
from medflow.stages.stage import ChampionsOpt, ParamsOpt, Stage


def package(
    params: Params,
    model_dir: Path,
    metrics: Path,
    gate_report: Path,
    out: Path,
    *,
    project_root: Path = Path("."),
    champions: Path | None = None,
    manifest: Path | None = None,
    predictions: Path | None = None,
) -> Any:
    """Store the model, build its Bento and write the Bento's tag to `out`.

    Args:
        project_root: where deploy/bentofile.yaml and src/ are.
        champions: the folder of champions: the model becomes its dataset's champion.
        manifest: the ingested manifest (test-split reference samples for infra-validation).
        predictions: evaluate's predictions.csv (the samples' evaluated probabilities).

    Raises:
        GateFailed: the gate did not pass; nothing is built.
    """
    from medflow.data.dataset import Dataset, champion_folder
    from medflow.registry.packaging import run_package

    dataset = Dataset.of(params.data)
    return run_package(
        params.package,
        model_dir,
        metrics,
        gate_report,
        project_root,
        out,
        champion_dir=champion_folder(champions, dataset.key) if champions is not None else None,
        dataset=dataset,
        manifest=manifest,
        predictions=predictions,
    )


def run(layout: Layout, params: Params) -> Any:
    """The stage on the project layout."""
    return package(
        params,
        layout.models,
        layout.metrics,
        layout.gate,
        layout.bento,
        project_root=layout.root,
        champions=layout.champion,
        manifest=layout.manifest,
        predictions=layout.predictions,
    )


def command(
    model_dir: Annotated[Path, typer.Argument(help="the train stage's model folder")],
    metrics: Annotated[Path, typer.Argument(help="the evaluate stage's metrics.json")],
    gate_report: Annotated[Path, typer.Argument(help="the gate stage's gate.json")],
    out: Annotated[Path, typer.Argument(help="where to write the Bento's tag (bento.json)")],
    params: ParamsOpt = Path("params.yaml"),
    project_root: Annotated[Path, typer.Option(help="where deploy/ and src/ are")] = Path("."),
    champions: ChampionsOpt = None,
    manifest: Annotated[
        Path | None, typer.Option(help="the ingested manifest: test-split reference samples")
    ] = None,
    predictions: Annotated[
        Path | None, typer.Option(help="evaluate's predictions.csv: the samples' probabilities")
    ] = None,
) -> None:
    """Save the model to the BentoML store, build its Bento; write the tag to OUT.

    With --champions, the model becomes the champion of its dataset, the one the next gate on
    that dataset compares against.
    """
    result = package(
        load_params(params),
        model_dir,
        metrics,
        gate_report,
        out,
        project_root=project_root,
        champions=champions,
        manifest=manifest,
        predictions=predictions,
    )
    typer.echo(f"Bento built: {result.bento_tag}\nServe it with:  bentoml serve {result.bento_tag}")
    if champions is not None and not result.champion:
        typer.echo(
            f"Not made the champion: the same network was replaced by hand (promote/rollback);"
            f" to serve it anyway: medflow models promote {result.model_tag}"
        )


STAGE = Stage("package", run, command)
