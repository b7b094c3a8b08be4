"""The ingest stage: DICOM (or .npz) in; de-identified images, manifest and quarantine out."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from medflow.config import Params, load_params
from medflow.stages.layout import Layout
from medflow.stages.stage import ParamsOpt, Progress, Stage

log = logging.getLogger("medflow")


def ingest(
    params: Params,
    src: Path,
    out: Path,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Any:
    """De-identify and index everything under `src` into `out` (only new or changed files).

    Args:
        workers: worker processes (default: params ingest.workers).
        progress: called with (files done, files in total) as the run goes.

    Raises:
        IngestFailed: too much was quarantined, or no usable image was found.
    """
    from medflow.data.deid import resolve_deid_key
    from medflow.data.ingest import IngestConfig, run_ingest

    if workers is not None:
        update = {"ingest": params.ingest.model_copy(update={"workers": workers})}
        params = params.model_copy(update=update)
    key = resolve_deid_key(
        os.environ,
        synthetic=params.data.is_synthetic,
        allow_demo=params.deid.allow_demo_key_for_synthetic,
    )
    return run_ingest(IngestConfig.from_params(params), src, out, key, progress=progress)


def run(layout: Layout, params: Params, progress: Progress | None = None) -> Any:
    """The stage on the project layout: data.source (relative to data/) into data/ingested."""
    source = params.data.resolve_source(layout.data)
    return ingest(params, source, layout.ingested, progress=progress)


def command(
    src: Annotated[
        Path, typer.Argument(help="folder of DICOM files with labels.csv or class folders, or .npz")
    ],
    out: Annotated[Path, typer.Argument(help="folder for the de-identified images and manifest")],
    params: ParamsOpt = Path("params.yaml"),
    workers: Annotated[
        int | None, typer.Option(help="worker processes (default: params ingest.workers)")
    ] = None,
) -> None:
    """De-identify the DICOM (or .npz) under SRC into OUT, with manifest.csv.

    Reads SRC recursively (DICOM with labels.csv or class folders, or .npz); writes the
    images, manifest.csv and quarantine.csv into OUT. Re-running reads only new or changed
    files.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    p = load_params(params)
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("ingest", total=None)
        result = ingest(
            p,
            src,
            out,
            workers=workers,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if result.unchanged:
        log.info(
            "ingest: nothing changed since the last run; %d images in %s", result.n_images, out
        )
    else:
        log.info(
            "ingest: %d images from %d files (%d reused); not ingested: %s",
            result.n_images,
            result.n_files,
            result.n_reused,
            result.outcomes or "none",
        )


STAGE = Stage("ingest", run, command)
