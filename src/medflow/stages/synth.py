"""The synth stage: write the built-in synthetic DICOM dataset (with labels.csv)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from medflow.config import Params, load_params
from medflow.stages.layout import Layout
from medflow.stages.stage import ParamsOpt, Stage

log = logging.getLogger("medflow")


def synth(params: Params, out: Path) -> Any:
    """Write the synthetic dataset of params `synth`, `data.class_names` and `data.task` (SEG
    objects of the lesions for segmentation) into `out`."""
    from medflow.data.synthetic import run_synth

    return run_synth(params.synth, params.data.class_names, out, params.data.task)


def run(layout: Layout, params: Params) -> Any:
    """The stage on the project layout."""
    return synth(params, layout.synthetic)


def command(
    out: Annotated[Path, typer.Argument(help="folder to write the DICOM files and labels.csv")],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Write the synthetic DICOM dataset (with labels.csv) into OUT."""
    log.info("synthetic dataset: %s", synth(load_params(params), out))


STAGE = Stage("synth", run, command)
