"""The evaluate stage: test-split metrics, subgroups, plots, and the champion's baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medflow.config import Params, load_params
from medflow.stages.layout import Layout
from medflow.stages.stage import ChampionsOpt, ParamsOpt, Stage


def evaluate(
    params: Params,
    model_dir: Path,
    arrays_dir: Path,
    manifest: Path,
    out: Path,
    champions: Path | None = None,
) -> Any:
    """Score the model of `model_dir` on the test split; write the reports into `out`
    (data.task segmentation: masks, by medflow.evaluation.segmentation).

    Args:
        manifest: the ingested manifest.csv (subgroups, the champion's preprocessing).
        champions: the folder of champions; the dataset's champion is scored on the same
            test split (out/baseline.json). None: no baseline.
    """
    from medflow.data.dataset import Dataset, champion_folder

    if params.data.task == "segmentation":
        from medflow.evaluation.segmentation import run_segmentation_evaluate as run_evaluate
    else:
        from medflow.evaluation.scoring import run_evaluate

    dataset = Dataset.of(params.data)
    folder = champion_folder(champions, dataset.key) if champions is not None else None
    return run_evaluate(
        params.evaluate, model_dir, arrays_dir, manifest, out, champion_dir=folder, dataset=dataset
    )


def run(layout: Layout, params: Params) -> Any:
    """The stage on the project layout."""
    return evaluate(
        params, layout.models, layout.preprocessed, layout.manifest, layout.reports, layout.champion
    )


def command(
    model_dir: Annotated[Path, typer.Argument(help="the train stage's model folder")],
    arrays_dir: Annotated[Path, typer.Argument(help="the preprocess stage's output folder")],
    manifest: Annotated[Path, typer.Argument(help="the ingest stage's manifest.csv")],
    out: Annotated[Path, typer.Argument(help="folder for metrics, subgroups, plots, predictions")],
    params: ParamsOpt = Path("params.yaml"),
    champions: ChampionsOpt = None,
) -> None:
    """Score the model on the test split; write metrics, subgroups, plots into OUT.

    The operating threshold is chosen on val; subgroups come from MANIFEST (the ingest's
    manifest.csv). With --champions, the dataset's champion is scored on the same test split
    too (OUT/baseline.json, what the gate's change rules compare with).
    """
    evaluate(load_params(params), model_dir, arrays_dir, manifest, out, champions)


STAGE = Stage("evaluate", run, command)
