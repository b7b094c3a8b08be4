"""The validate stage: Great Expectations suites and drift on the ingested manifest."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from medflow.config import Params, load_params
from medflow.stages.layout import Layout
from medflow.stages.stage import ParamsOpt, Stage

log = logging.getLogger("medflow")


def validate(
    params: Params,
    ingest_dir: Path,
    out: Path,
    *,
    reference: Path | None = None,
    references: Path | None = None,
) -> Any:
    """Validate the manifest of `ingest_dir`; write the report and Data Docs into `out`.

    Args:
        reference: one drift reference profile (compared with, replaced when the data pass).
        references: a folder of them, one per dataset: the dataset of params data.source,
            data.class_names and data.task uses <references>/<key>/profile.json. Give one or
            the other.

    Raises:
        ValidationFailed: a suite failed (the report names the rules and rows).
    """
    from medflow.data.dataset import Dataset, reference_profile
    from medflow.validation.stage import run_validate

    dataset = Dataset.of(params.data)
    if references is not None:
        if reference is not None:
            raise ValueError("give --reference (one profile) or --references (a folder), not both")
        reference = reference_profile(references, dataset.key)
    return run_validate(
        params.validate_,
        params.data.class_names,
        ingest_dir,
        out,
        reference,
        dataset,
        task=params.data.task,
    )


def run(layout: Layout, params: Params) -> Any:
    """The stage on the project layout."""
    return validate(params, layout.ingested, layout.validation, references=layout.references)


def command(
    ingest_dir: Annotated[Path, typer.Argument(help="the ingest stage's output folder")],
    out: Annotated[Path, typer.Argument(help="folder for the validation report and Data Docs")],
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="drift reference profile: compared with if present, replaced when the run passes",
        ),
    ] = None,
    references: Annotated[
        Path | None,
        typer.Option(
            "--references",
            help="folder of drift references, one per dataset: uses <folder>/<dataset key>/"
            "profile.json for the dataset of params data.source, data.class_names and data.task",
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Validate the manifest in INGEST_DIR with Great Expectations; report into OUT."""
    result = validate(
        load_params(params), ingest_dir, out, reference=reference, references=references
    )
    log.info("validation passed (%s); Data Docs: %s", result.statistics, result.docs_index)


STAGE = Stage("validate", run, command)
