"""The train stage: fit the classifier (or, for data.task segmentation, the U-Net) with
Lightning; write the model artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medflow.config import Params, load_params
from medflow.stages.layout import Layout
from medflow.stages.stage import ParamsOpt, Progress, Stage


def train(
    params: Params,
    arrays_dir: Path,
    out: Path,
    checkpoint_dir: Path | None = None,
    root: Path = Path("."),
    progress: Progress | None = None,
    curves: Path | None = None,
) -> Any:
    """Train on the arrays of `arrays_dir`; write model.pt, model.json and the card into `out`.
    params.data.task chooses the classifier (models.training) or the U-Net
    (models.segmentation, which also reads the masks `<split>_m.npy`).

    Args:
        checkpoint_dir: where an interrupted run of the same params and data resumes from
            (default: .<out>-checkpoints beside `out`).
        root: the project root, where a relative train.pretrained_weights is found.
        progress: called with (epochs done, train.max_epochs) after each epoch.
        curves: folder for the per-epoch curves (dvclive: metrics.json, plots/metrics/).
    """
    if params.data.task == "segmentation":
        from medflow.models.segmentation import run_train_segmentation as run_train
    else:
        from medflow.models.training import run_train

    return run_train(
        params.train,
        params.data.class_names,
        arrays_dir,
        out,
        checkpoint_dir=checkpoint_dir,
        root=root,
        progress=progress,
        live_dir=curves,
    )


def run(layout: Layout, params: Params, progress: Progress | None = None) -> Any:
    """The stage on the project layout."""
    return train(
        params,
        layout.preprocessed,
        layout.models,
        root=layout.root,
        progress=progress,
        curves=layout.training,
    )


def command(
    arrays_dir: Annotated[Path, typer.Argument(help="the preprocess stage's output folder")],
    out: Annotated[Path, typer.Argument(help="folder for the model artifact")],
    params: ParamsOpt = Path("params.yaml"),
    checkpoints: Annotated[
        Path | None,
        typer.Option(help="checkpoints to resume from (default: .<OUT>-checkpoints beside OUT)"),
    ] = None,
    curves: Annotated[
        Path | None,
        typer.Option(help="folder for the per-epoch curves (dvclive; the train stage's plots)"),
    ] = None,
) -> None:
    """Train the classifier (or the U-Net: data.task) on ARRAYS_DIR; write the model
    artifact into OUT.

    An interrupted run of the same params and data resumes from its last checkpoint.
    """
    # the project root is params.yaml's folder
    train(load_params(params), arrays_dir, out, checkpoints, root=params.parent, curves=curves)


STAGE = Stage("train", run, command)
