"""The pipeline's stages in dvc.yaml order: the registry the CLI and the Prefect flow read.

Each stage module holds the stage function (a thin call into the library packages), its run
on the project layout and its command-line form; neither the CLI nor the flow lists stages.
"""

from __future__ import annotations

from medflow.stages import (
    evaluate,
    gate,
    ingest,
    package,
    preprocess,
    pull,
    synth,
    train,
    validate,
)
from medflow.stages.stage import Stage

STAGES: dict[str, Stage] = {
    module.STAGE.name: module.STAGE
    for module in (synth, pull, ingest, validate, preprocess, train, evaluate, gate, package)
}

__all__ = ["STAGES", "Stage"]
