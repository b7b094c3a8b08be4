"""The preprocess stage: de-identified DICOM to training arrays, one set per split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medflow.config import Params, load_params
from medflow.stages.layout import Layout
from medflow.stages.stage import ParamsOpt, Stage


def preprocess(params: Params, ingest_dir: Path, out: Path) -> Any:
    """Preprocess every image of the ingested manifest (the Bento's path) into `out`."""
    from medflow.data.preprocessing import run_preprocess

    return run_preprocess(params.preprocess, ingest_dir, out)


def run(layout: Layout, params: Params) -> Any:
    """The stage on the project layout."""
    return preprocess(params, layout.ingested, layout.preprocessed)


def command(
    ingest_dir: Annotated[Path, typer.Argument(help="the ingest stage's output folder")],
    out: Annotated[Path, typer.Argument(help="folder for the arrays (<split>_x.npy, ...)")],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Turn the de-identified DICOM in INGEST_DIR into training arrays in OUT."""
    preprocess(load_params(params), ingest_dir, out)


STAGE = Stage("preprocess", run, command)
