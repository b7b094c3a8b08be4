"""The pull: mirror what params `pacs` matches on the PACS into the raw folder, incrementally.

The raw folder (data/pacs) becomes the ingest's source folder: labelled instances under
keyed tokens, and labels.csv (path,label). Only instances not yet held are retrieved;
complete series are not even listed instance by instance. Files of instances the query no
longer matches (or whose study lost its label) are removed: the folder mirrors the query's
result, the PACS keeps the originals. The record (pull.json) changes exactly when that
result or a label changes, so DVC re-runs the ingest then and only then.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd

from medflow.config import DataParams, PacsParams
from medflow.data.workers import Mapper, serial_mapper
from medflow.errors import PacsError
from medflow.io import write_json_atomic, write_text_atomic
from medflow.pacs.client import connect, server_name
from medflow.pacs.labels import StudyLabels, read_study_labels
from medflow.pacs.query import (
    FoundSeries,
    FoundStudy,
    find_instances,
    find_series,
    find_studies,
    shown_filters,
    split_filters,
)
from medflow.pacs.retrieve import (
    SUFFIX,
    Item,
    RetrieveResult,
    RetrieveShard,
    retrieve_shard,
    series_folder,
    token,
)

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"  # the ingest's folder format: path,label
NOT_PACS = {"source": "not pacs: nothing pulled"}
"""The record of a run with any other data.source: the same bytes every run, so the ingest
that depends on it is not re-run."""

Progress = Callable[[int, int], None]  # (instances retrieved, instances to retrieve)


@dataclass(frozen=True)
class PullRecord:
    """pull.json: what the query matched, without identifiers or anything run-dependent."""

    server: str
    filters: dict[str, str]
    studies: int  # matched and labelled
    instances: int  # held for them after the run
    digest: str  # keyed HMAC over the sorted (study, series, sop tokens, label)
    source: str = "pacs"

    def write(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))


@dataclass(frozen=True)
class PullResult:
    """A run's counts (the log and the stage's return; never in pull.json)."""

    record: PullRecord
    retrieved: int
    retrieved_bytes: int
    removed: int
    studies_matched: int
    studies_unlabelled: int
    seconds: float
    series_complete: int = 0
    shards: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Wanted:
    """A matched series of a labelled study (or the whole study: series_uid None) and what
    of it must be retrieved."""

    study_uid: str
    series_uid: str | None
    label: int
    missing: Item | None  # None: held complete
    keep: set[str] | None  # sop file names the server lists (None: not listed, keep all)

    def folder(self, raw: Path, key: bytes) -> Path:
        study = raw / token(key, "study", self.study_uid)
        return study if self.series_uid is None else series_folder(raw, key, *self.uids)

    @property
    def uids(self) -> tuple[str, str]:
        return self.study_uid, str(self.series_uid)


def run_pull(
    pacs: PacsParams,
    data: DataParams,
    raw: Path,
    labels_file: Path | None,
    key: bytes,
    *,
    shard_size: int = 64,
    mapper: Mapper | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
) -> PullResult:
    """Query the PACS, retrieve what is not held into `raw`, and write raw/labels.csv.

    Args:
        labels_file: the StudyInstanceUID/AccessionNumber labels CSV (classification);
            segmentation needs none (every matched study, masks from its SEG series).
        shard_size: instances per unit of work given to `mapper` (default: in this process).
        env: where the credentials' variables are read (default: os.environ).

    Raises:
        PacsError: the PACS refused or stayed unreachable (what was retrieved is kept), or
            the query matched no labelled study.
        IngestFailed: the labels file is missing or malformed.
    """
    started = time.perf_counter()
    raw.mkdir(parents=True, exist_ok=True)
    _remove_partial(raw)
    segmentation = data.task == "segmentation"
    labels = None if segmentation else _labels(labels_file, data.class_names)
    client = connect(pacs, os.environ if env is None else env)
    study_filters, series_filters = split_filters(pacs.filters)
    studies = find_studies(client, pacs, study_filters)
    labelled = {
        s.uid: (0 if labels is None else labels.label_of(s.uid, s.accession)) for s in studies
    }
    labelled = {uid: label for uid, label in labelled.items() if label is not None}
    server = server_name(pacs.url)
    if not labelled:
        where = "" if labels is None else f", none of them listed in {labels_file}"
        raise PacsError(
            f"PACS {server}: the query (pacs.filters {shown_filters(pacs.filters)}) matched"
            f" {len(studies)} studies{where}; nothing to train on (the raw folder is left as"
            " it was)"
        )

    def plan(study: FoundStudy) -> list[_Wanted]:
        label = labelled[study.uid]
        if not series_filters:  # every series of the study is wanted
            whole = _plan_study(raw, key, study, label)
            if whole is not None:
                return [whole]
        found = find_series(client, pacs, study.uid, series_filters, with_seg=segmentation)
        return [_plan_series(client, pacs, raw, key, s, label) for s in found]

    chosen = sorted((s for s in studies if s.uid in labelled), key=lambda s: s.uid)
    with ThreadPoolExecutor(pacs.workers) as pool:
        wanted = [w for ws in pool.map(plan, chosen) for w in ws]
    todo = [w.missing for w in wanted if w.missing is not None]
    shards = _shards(pacs, raw, key, todo, shard_size)
    total = sum(s.n_expected for s in shards)
    logger.info(
        "pull from %s: %d studies matched, %d labelled; %d studies/series, %d complete here; %d"
        " instance(s) to retrieve in %d shard(s)",
        server,
        len(studies),
        len(labelled),
        len(wanted),
        len(wanted) - len(todo),
        total,
        len(shards),
    )
    retrieved = retrieved_bytes = 0
    if progress:
        progress(0, total)
    try:
        for result in _run(mapper or serial_mapper, shards, env):
            retrieved += result.n_files
            retrieved_bytes += result.n_bytes
            if progress:
                progress(retrieved, max(total, retrieved))
    except PacsError:
        logger.error(
            "pull from %s stopped: %d instance(s) retrieved and kept, the rest not; a later"
            " run retrieves only what is missing",
            server,
            retrieved,
        )
        raise
    removed = _mirror(raw, key, wanted)
    record = _record(pacs, raw, key, wanted, data.class_names, write_labels=not segmentation)
    seconds = time.perf_counter() - started
    logger.info(
        "pull from %s: %d instance(s) retrieved (%.1f MB) in %.1f s, %d removed; %d held for"
        " %d studies",
        server,
        retrieved,
        retrieved_bytes / 1e6,
        seconds,
        removed,
        record.instances,
        record.studies,
    )
    return PullResult(
        record=record,
        retrieved=retrieved,
        retrieved_bytes=retrieved_bytes,
        removed=removed,
        studies_matched=len(studies),
        studies_unlabelled=len(studies) - len(labelled),
        seconds=seconds,
        series_complete=len(wanted) - len(todo),
        shards=len(shards),
    )


def _labels(path: Path | None, class_names: list[str]) -> StudyLabels:
    if path is None:
        raise PacsError("a classification pull needs the labels file of params pacs.labels")
    return read_study_labels(path, class_names)


def _remove_partial(raw: Path) -> None:
    """Temporary files a killed run left (atomic writes start with "."): never ingested."""
    for path in raw.rglob(".*"):
        if path.is_file():
            path.unlink(missing_ok=True)


def _held(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def _plan_study(raw: Path, key: bytes, study: FoundStudy, label: int) -> _Wanted | None:
    """Nothing of the study held: all of it in one request; all held (the server's count):
    nothing, not even a series query. None: part held, planned series by series."""
    folder = raw / token(key, "study", study.uid)
    held = sum(1 for _ in folder.glob(f"*/*{SUFFIX}")) if folder.is_dir() else 0
    if not held:
        item = Item(study.uid, None, None, study.n_instances or 0)
        return _Wanted(study.uid, None, label, item, None)
    if study.n_instances is not None and held == study.n_instances:
        return _Wanted(study.uid, None, label, None, None)
    return None


def _plan_series(
    client: object, pacs: PacsParams, raw: Path, key: bytes, series: FoundSeries, label: int
) -> _Wanted:
    """Nothing held: the whole series in one request. All held (the server's count): nothing.
    Part held: its instances listed, the missing ones retrieved one by one."""
    held = _held(series_folder(raw, key, series.study_uid, series.uid))
    if not held:
        item = Item(series.study_uid, series.uid, None, series.n_instances or 0)
        return _Wanted(series.study_uid, series.uid, label, item, None)
    if series.n_instances is not None and len(held) == series.n_instances:
        return _Wanted(series.study_uid, series.uid, label, None, None)
    sops = find_instances(client, pacs, series.study_uid, series.uid)  # type: ignore[arg-type]
    names = {f"{token(key, 'sop', sop)}{SUFFIX}": sop for sop in sops}
    missing = tuple(sop for name, sop in sorted(names.items()) if name not in held)
    item = Item(series.study_uid, series.uid, missing, len(missing)) if missing else None
    return _Wanted(series.study_uid, series.uid, label, item, set(names))


def _shards(
    pacs: PacsParams, raw: Path, key: bytes, items: list[Item], size: int
) -> list[RetrieveShard]:
    """Items grouped into shards of about `size` instances (a series is never split)."""
    shards: list[RetrieveShard] = []
    batch: list[Item] = []
    count = 0
    for item in items:
        batch.append(item)
        count += max(1, item.n_expected)
        if count >= size:
            shards.append(RetrieveShard(pacs, str(raw), key, tuple(batch)))
            batch, count = [], 0
    if batch:
        shards.append(RetrieveShard(pacs, str(raw), key, tuple(batch)))
    return shards


def _run(
    mapper: Mapper, shards: list[RetrieveShard], env: Mapping[str, str] | None
) -> Iterator[RetrieveResult]:
    # an explicit env travels with the function to local workers only (a Dask mapper runs
    # its own task, which reads the worker's environment): credentials are never a shard
    fn = retrieve_shard if env is None else partial(retrieve_shard, env=dict(env))
    if shards:
        yield from mapper(fn, shards)


def _mirror(raw: Path, key: bytes, wanted: list[_Wanted]) -> int:
    """Remove what the query no longer matches; the number of files removed."""
    whole = {w.folder(raw, key) for w in wanted if w.series_uid is None}
    keep = {w.folder(raw, key): w.keep for w in wanted if w.series_uid is not None}
    studies = whole | {folder.parent for folder in keep}
    removed = 0
    for study in [p for p in raw.iterdir() if p.is_dir()]:
        if study in whole:
            continue
        for series in [p for p in study.iterdir() if p.is_dir()]:
            if series not in keep:
                removed += len(_held(series))
                shutil.rmtree(series)
                continue
            names = keep[series]
            if names is not None:
                for name in _held(series) - names:
                    (series / name).unlink()
                    removed += 1
        if study not in studies and not any(study.iterdir()):
            study.rmdir()
    return removed


def _record(
    pacs: PacsParams,
    raw: Path,
    key: bytes,
    wanted: list[_Wanted],
    class_names: list[str],
    *,
    write_labels: bool,
) -> PullRecord:
    """raw/labels.csv (classification) and the record, from what is held now."""
    rows: list[tuple[str, str, int]] = []
    for w in wanted:
        top = w.folder(raw, key)
        folders = [top] if w.series_uid is not None else sorted(top.glob("*/"))
        for folder in folders:
            for name in _held(folder):
                rows.append((folder.relative_to(raw).as_posix(), name, w.label))
    rows.sort()
    if write_labels:
        table = pd.DataFrame(
            [(f"{f}/{n}", class_names[label]) for f, n, label in rows], columns=["path", "label"]
        )
        write_text_atomic(raw / LABELS_FILE, table.to_csv(index=False))
    else:
        (raw / LABELS_FILE).unlink(missing_ok=True)
    mac = hmac.new(key, b"medflow/pacs/pull-record", hashlib.sha256)
    for folder, name, label in rows:
        mac.update(f"{folder}/{name}\t{label}\n".encode())
    return PullRecord(
        server=server_name(pacs.url),
        filters=shown_filters(pacs.filters),
        studies=len({w.study_uid for w in wanted}),
        instances=len(rows),
        digest=mac.hexdigest(),
    )
