"""The pull stage: data.source pacs -> the PACS's matching instances into data/pacs.

Any other source: a no-op that writes the same record every run, so the ingest after it
(which depends on the record) is not re-run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medflow.config import Params, load_params
from medflow.stages.layout import Layout
from medflow.stages.stage import ParamsOpt, Progress, Stage

if TYPE_CHECKING:
    from medflow.data.workers import Mapper

log = logging.getLogger("medflow")


def pull(
    params: Params,
    raw: Path,
    record: Path,
    *,
    labels: Path | None = None,
    mapper: Mapper | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
) -> Any:
    """Retrieve what params `pacs` matches and is not held yet into `raw`; write `record`
    (pull.json) when the run completes. Not a pacs source: write the constant record only.

    Args:
        labels: the labels CSV (default: params pacs.labels, relative to raw's parent, data/).
        mapper: where the retrieval shards run (default: ingest.workers local processes).
        env: the environment the credentials and the de-identification key are read from.

    Raises:
        PacsError: the PACS failed (naming it); the record is then left as it was.
    """
    from medflow.io import write_json_atomic
    from medflow.pacs.pull import NOT_PACS

    if not params.data.is_pacs:
        if not _same_json(record, NOT_PACS):
            write_json_atomic(record, NOT_PACS)
        return None
    from medflow.data.deid import resolve_deid_key
    from medflow.data.workers import local_mapper
    from medflow.pacs.pull import run_pull

    env = os.environ if env is None else env
    # the raw folder's names are tokens of this key: the same key as the ingest's
    key = resolve_deid_key(env, synthetic=False, allow_demo=False)
    if labels is None:
        labels = Path(params.pacs.labels).expanduser()
        labels = labels if labels.is_absolute() else raw.parent / labels
    result = run_pull(
        params.pacs,
        params.data,
        raw,
        None if params.data.task == "segmentation" else labels,
        key,
        shard_size=params.ingest.shard_size,
        mapper=mapper or local_mapper(params.ingest.workers, ("medflow.pacs.retrieve",)),
        progress=progress,
        env=env,
    )
    result.record.write(record)
    return result


def _same_json(path: Path, obj: dict[str, str]) -> bool:
    import json

    try:
        return json.loads(path.read_text()) == obj
    except (OSError, ValueError):
        return False


def run(layout: Layout, params: Params, progress: Progress | None = None) -> Any:
    """The stage on the project layout: into data/pacs, recorded in data/pull.json."""
    return pull(params, layout.pacs_raw, layout.pull_record, progress=progress)


def command(
    raw: Annotated[
        Path, typer.Argument(help="the raw folder the instances go to (identifiable: not cached)")
    ],
    record: Annotated[Path, typer.Argument(help="the record of what the query matched (JSON)")],
    params: ParamsOpt = Path("params.yaml"),
    labels: Annotated[
        Path | None,
        typer.Option(help="labels CSV (default: params pacs.labels, beside RAW's folder)"),
    ] = None,
) -> None:
    """Retrieve from the PACS (data.source pacs) the instances not yet held into RAW.

    QIDO-RS finds what params pacs.filters match, WADO-RS retrieves the new instances, and
    RAW/labels.csv labels them from pacs.labels. RECORD changes only when the query's result
    does. For any other data.source: writes a constant RECORD and nothing else.
    """
    p = load_params(params)
    result = pull(p, raw, record, labels=labels)
    if result is None:
        log.info("pull: data.source is %r, not pacs: nothing to pull", p.data.source)
    else:
        log.info(
            "pull: %d retrieved, %d removed, %d instances of %d studies held",
            result.retrieved,
            result.removed,
            result.record.instances,
            result.record.studies,
        )


# The PACS can change while nothing here does: with a pacs source the pull runs every time
# (dvc.yaml: always_changed); with another, only when its record is missing or stale.
STAGE = Stage("pull", run, command, runs_always=lambda params: params.data.is_pacs)
