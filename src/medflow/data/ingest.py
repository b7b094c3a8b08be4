"""The ingest stage: DICOM folder (or .npz archive) + labels -> de-identified dataset + manifest.

Every decodable, labelled image is de-identified and written to images/<content hash>.dcm
with one manifest row per sample; every other file goes to quarantine.csv with its sha256,
outcome and reason, and the run goes on, unless more than ingest.max_quarantine_fraction
of the files were lost. The work is done in shards (shard.py), here or in worker
processes or on a Dask cluster (a `mapper`); only new or changed files are read again
(incremental.py). Before the output folder appears, a PHI audit searches every output byte
for the original identifiers. The output is built in a temporary folder and renamed into
place, so a failed run leaves the previous output as it was.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from medflow.config import DataParams, DeidParams, IngestParams, Params, PreprocessParams
from medflow.data import incremental
from medflow.data.deid import Deidentifier, PhiAudit, Profile, SafePrivateTag
from medflow.data.manifest import (
    COLUMNS,
    MANIFEST_FILE,
    SEG_COLUMNS,
    SEGMENTATIONS_FILE,
    SPLITS,
    read_manifest,
)
from medflow.data.npz_source import npz_to_dicom
from medflow.data.pairing import attach_masks
from medflow.data.shard import (
    DUPLICATE,
    IMAGES_DIR,
    NO_LABEL,
    PHI_AUDIT,
    QUARANTINED,
    SEGMENTATION,
    SEGMENTATIONS_DIR,
    SKIPPED,
    Outcome,
    ShardSettings,
    ShardTask,
    ingest_shard,
    quiet_pydicom,
)
from medflow.data.sources import (
    LABELS_FILE,
    SourceFile,
    Unreadable,
    read_labels,
    read_mask_paths,
    walk_source,
)
from medflow.data.splits import assign_splits
from medflow.data.workers import Mapper, local_mapper
from medflow.errors import IngestFailed
from medflow.io import atomic_dir, write_json_atomic

logger = logging.getLogger(__name__)

QUARANTINE_FILE = incremental.QUARANTINE_FILE
PHI_AUDIT_FILE = "phi_audit.json"
LOG_FILE = "ingest.log"
MISSING = "listed in labels.csv but missing"
QUARANTINE_COLUMNS = ["path", "sha256", "outcome", "reason", "category"]

Progress = Callable[[int, int], None]  # (files done, files in all)


@dataclass(frozen=True)
class IngestConfig:
    """The params sections the ingest stage reads."""

    data: DataParams
    ingest: IngestParams
    deid: DeidParams
    preprocess: PreprocessParams

    @classmethod
    def from_params(cls, params: Params) -> IngestConfig:
        return cls(params.data, params.ingest, params.deid, params.preprocess)

    def shard_settings(self) -> ShardSettings:
        return ShardSettings(
            class_names=tuple(self.data.class_names),
            frames=self.preprocess.frames,
            max_frame_pixels=self.preprocess.max_frame_pixels,
            allow_burned_in_annotation=self.deid.allow_burned_in_annotation,
            burned_in_text=self.deid.burned_in_text,
            deid=Profile(
                retain_modified_dates=self.deid.retain_modified_dates,
                retain_patient_characteristics=self.deid.retain_patient_characteristics,
                retain_device_identity=self.deid.retain_device_identity,
                clean_descriptors=self.deid.clean_descriptors,
                safe_private_tags=tuple(
                    SafePrivateTag(t.group, t.creator, t.element)
                    for t in self.deid.safe_private_tags
                ),
            ),
            task=self.data.task,
        )


@dataclass(frozen=True)
class IngestResult:
    n_images: int
    n_quarantined: int  # files lost: unreadable, undecodable or refused
    n_patients: int
    manifest: Path
    data_hash: str  # sha256 over the sorted (content hash, frame, label) triples
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images
    outcomes: dict[str, int] = field(default_factory=dict)  # quarantined/skipped/duplicate
    n_files: int = 0
    n_reused: int = 0  # files whose previous result was reused without decoding
    unchanged: bool = False  # nothing to do: the output was left as it was


def run_ingest(
    config: IngestConfig,
    source: Path,
    out_dir: Path,
    key: bytes,
    *,
    mapper: Mapper | None = None,
    progress: Progress | None = None,
) -> IngestResult:
    """Ingest a DICOM folder (labels.csv or class folders), or a MedMNIST-style .npz, into out_dir.

    `mapper` runs the shards (default: a local pool of ingest.workers processes).
    """
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise IngestFailed(
            f"data source {source} does not exist (data.source: {config.data.source!r})"
        )
    if out_dir.resolve().is_relative_to(source.resolve()):
        raise IngestFailed(f"output folder {out_dir} is inside the source {source}; move it out")
    mapper = mapper or local_mapper(config.ingest.workers)
    if source.is_file() and source.suffix.lower() == ".npz":
        with tempfile.TemporaryDirectory(prefix="medflow-npz-") as scratch:
            try:
                records = npz_to_dicom(
                    source, list(config.data.class_names), Path(scratch) / "dicom"
                )
            except ValueError as exc:
                raise IngestFailed(str(exc)) from exc
            official = {r.path: r.split for r in records}
            return _ingest_folder(
                config, Path(scratch) / "dicom", out_dir, key, mapper, progress, official
            )
    if source.is_dir():
        return _ingest_folder(config, source, out_dir, key, mapper, progress, None)
    raise IngestFailed(
        f"data source {source} is neither a folder (DICOM files + {LABELS_FILE}, or one folder"
        " per class) nor an .npz archive"
    )


@dataclass(frozen=True)
class _Listing:
    """What the source folder holds, and one digest of it: equal to the last run's, nothing
    changed."""

    files: list[SourceFile]  # labels.csv left out
    unreadable: list[Unreadable]
    labels: dict[str, int]  # path -> class index (segmentation: 0 until the mask is known)
    digest: str
    masks: dict[str, str] = field(default_factory=dict)  # image path -> labels.csv mask file

    @property
    def n_files(self) -> int:
        """Files and unreadable paths: what the quarantine fraction is a fraction of."""
        return len(self.files) + len(self.unreadable)


class _Read(NamedTuple):
    """What the shards and the unchanged files' previous results gave."""

    manifest: pd.DataFrame
    outcomes: list[Outcome]
    hashes: dict[str, str]  # path -> sha256
    audit: PhiAudit
    files_scanned: int
    segs: list[dict[str, object]]  # SEG objects written or reused (segmentation)


def _ingest_folder(
    config: IngestConfig,
    source: Path,
    out_dir: Path,
    key: bytes,
    mapper: Mapper,
    progress: Progress | None,
    official_splits: dict[str, str] | None,
) -> IngestResult:
    Deidentifier(key)  # a bad key fails here, before any work
    class_names = list(config.data.class_names)
    listing = _list_source(config, source, key, official_splits)
    settings = config.shard_settings()
    fingerprint = incremental.fingerprint(key, settings)
    previous = incremental.load_previous(out_dir, fingerprint)
    if previous is not None and previous.listing == listing.digest:
        return _unchanged(config, out_dir, listing)
    held_out = incremental.previous_splits(out_dir, key, config.data.split)
    reused, todo = _plan(key, listing, previous)

    with atomic_dir(out_dir) as tmp, ExitStack() as log_capture:
        log_capture.enter_context(_log_to(tmp / LOG_FILE))
        (tmp / IMAGES_DIR).mkdir()
        if config.data.task == SEGMENTATION:
            (tmp / SEGMENTATIONS_DIR).mkdir()
        size = config.ingest.shard_size
        tasks = [
            ShardTask(str(source), str(tmp), tuple(todo[i : i + size]), key, settings)
            for i in range(0, len(todo), size)
        ]
        manifest, outcomes, hashes, audit, files_scanned, segs = _read_files(
            listing, previous, reused, tasks, class_names, tmp, mapper, progress
        )
        manifest, outcomes = _resolve_duplicates(
            manifest, outcomes, hashes, listing.labels, class_names, tmp
        )
        if config.data.task == SEGMENTATION:
            manifest = _pair(source, listing, manifest, segs, hashes, class_names, tmp, outcomes)
        outcomes += _not_ingested(listing)
        by_outcome, by_category = _check_outcomes(config, source, listing, manifest, outcomes)
        manifest["split"] = _splits(config, manifest, hashes, official_splits, held_out)
        manifest = manifest.sort_values(["file", "frame"]).astype(COLUMNS)
        manifest.to_csv(tmp / MANIFEST_FILE, index=False)
        _write_quarantine(tmp / QUARANTINE_FILE, outcomes, audit)
        write_json_atomic(
            tmp / incremental.STATE_FILE,
            incremental.state(
                key, fingerprint, listing.digest, listing.files, hashes, config.data.split, tmp
            ),
        )
        result = _result(manifest, out_dir, by_outcome, len(listing.files), len(reused))
        by_audit = sum(1 for o in outcomes if o.category == PHI_AUDIT)
        _log_summary(result, len(listing.files), len(reused), by_outcome, by_category, by_audit)
        log_capture.close()  # the log is complete: audit it with the other shared outputs
        _audit(tmp, audit, files_scanned, by_audit, _vocabulary(class_names))
    return result


def _list_source(
    config: IngestConfig, source: Path, key: bytes, official_splits: dict[str, str] | None
) -> _Listing:
    """The source's files and labels; the digest covers everything that decides the output.

    Segmentation: every file is read (SEG objects and images alike; labels come from the
    masks), and the mask files labels.csv names are not files to ingest.
    """
    class_names = list(config.data.class_names)
    listed, unreadable = walk_source(source)
    segmentation = config.data.task == SEGMENTATION
    masks = read_mask_paths(source) if segmentation else {}
    mask_paths = set(masks.values())
    files = [f for f in listed if f.rel != LABELS_FILE and f.rel not in mask_paths]
    if segmentation:
        labels = {f.rel: 0 for f in files}
    else:
        labels = read_labels(source, [f.rel for f in files], class_names)
    extra = repr(
        (sorted((u.rel, u.reason) for u in unreadable), class_names, config.data.split)
    ) + repr(official_splits)
    if segmentation:
        tokens = sorted(
            (incremental.path_token(key, a), incremental.path_token(key, b))
            for a, b in masks.items()
        )
        extra += repr((SEGMENTATION, tokens))
    mask_files = [f for f in listed if f.rel in mask_paths]  # their size and time count too
    digest = incremental.listing_digest(key, files + mask_files, labels, extra)
    return _Listing(files, unreadable, labels, digest, masks)


def _pair(
    source: Path,
    listing: _Listing,
    manifest: pd.DataFrame,
    segs: list[dict[str, object]],
    hashes: dict[str, str],
    class_names: list[str],
    tmp: Path,
    outcomes: list[Outcome],
) -> pd.DataFrame:
    """Masks for every row (SEG objects, labels.csv mask files); segmentations.csv written."""
    mask_files: dict[str, tuple[str, Path]] = {}
    for rel, mask in sorted(listing.masks.items(), reverse=True):  # the first path wins
        if rel in hashes:
            mask_files[hashes[rel]] = (rel, source / mask)
    paired = attach_masks(manifest, segs, mask_files, class_names, tmp)
    outcomes += paired.outcomes
    paired.segs.to_csv(tmp / SEGMENTATIONS_FILE, index=False)
    return paired.manifest


def _unchanged(config: IngestConfig, out_dir: Path, listing: _Listing) -> IngestResult:
    """The result of the last ingest into out_dir, whose source has not changed since."""
    quarantine = _read_quarantine(out_dir)
    # The output stands as it was, but it must still pass this run's threshold.
    _check_losses(
        config,
        listing.n_files,
        int((quarantine.outcome == QUARANTINED).sum()),
        dict(Counter(quarantine.category).most_common()),
    )
    logger.info("nothing changed since the last ingest into %s: output left as it was", out_dir)
    return _result(
        read_manifest(out_dir),
        out_dir,
        {str(k): int(v) for k, v in quarantine.outcome.value_counts().items()},
        len(listing.files),
        len(listing.files),
        unchanged=True,
    )


def _plan(
    key: bytes, listing: _Listing, previous: incremental.Previous | None
) -> tuple[dict[str, str], list[tuple[str, int | None]]]:
    """The files whose previous result is reused (path -> sha256, known without reading the
    file), and the (path, label) pairs to read."""
    reused: dict[str, str] = {}
    todo: list[tuple[str, int | None]] = []
    for f in listing.files:
        sha = previous.sha_of(key, f) if previous is not None and f.rel in listing.labels else None
        if sha is not None and (
            sha in previous.rows_by_hash
            or sha in previous.outcomes_by_hash
            or sha in previous.segs_by_hash
        ):
            reused[f.rel] = sha
        else:
            todo.append((f.rel, listing.labels.get(f.rel)))
    return reused, todo


def _read_files(
    listing: _Listing,
    previous: incremental.Previous | None,
    reused: dict[str, str],
    tasks: list[ShardTask],
    class_names: list[str],
    tmp: Path,
    mapper: Mapper,
    progress: Progress | None,
) -> _Read:
    """Take the reused files' previous results, and run the shards on the other files."""
    # Rows are kept per shard as compact DataFrames: with 100k files, a dict per row
    # would be most of the ingest's memory.
    reused_rows: list[dict[str, object]] = []
    outcomes: list[Outcome] = []
    hashes = dict(reused)
    audit = PhiAudit()
    files_scanned = 0
    segs: list[dict[str, object]] = []
    if previous is not None:
        for rel, sha in reused.items():
            if sha in previous.segs_by_hash:
                segs.append(_reuse_seg(previous, rel, sha, tmp))
                continue
            label = listing.labels[rel]
            reused_rows += _reuse(previous, rel, sha, label, class_names, tmp, outcomes)
    tables = [_table(reused_rows)]
    del reused_rows
    logger.info(
        "ingesting %d file(s) in %d shard(s); %d unchanged file(s) reused",
        len(listing.files) - len(reused),
        len(tasks),
        len(reused),
    )
    done = len(reused)
    if progress:
        progress(done, len(listing.files))
    without_patient_id = text_redacted = 0
    for shard in mapper(ingest_shard, tasks):
        tables.append(_table(shard.rows))
        outcomes += shard.outcomes
        segs += shard.segs
        hashes.update(shard.hashes)
        audit.merge(shard.audit)
        files_scanned += shard.files_scanned
        without_patient_id += shard.without_patient_id
        text_redacted += shard.text_redacted
        done += len(shard.hashes) + sum(1 for o in shard.outcomes if not o.sha256)
        if progress:
            progress(done, len(listing.files))
    _log_shard_notes(without_patient_id, text_redacted)
    return _Read(pd.concat(tables, ignore_index=True), outcomes, hashes, audit, files_scanned, segs)


def _reuse_seg(previous: incremental.Previous, rel: str, sha: str, tmp: Path) -> dict[str, object]:
    """An unchanged SEG object's de-identified copy and record, from the last ingest."""
    record = dict(previous.segs_by_hash[sha])
    _link(previous.folder / str(record["file"]), tmp / str(record["file"]))
    return {"path": rel, **record}


def _link(source: Path, target: Path) -> None:
    if not target.exists():
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


def _log_shard_notes(without_patient_id: int, text_redacted: int) -> None:
    if without_patient_id:
        logger.warning(
            "%d image(s) have no PatientID: each of their studies is treated as its own patient",
            without_patient_id,
        )
    if text_redacted:
        logger.info(
            "%d image(s) read in this run showed text in their pixels, filled before"
            " writing (deid.burned_in_text)",
            text_redacted,
        )


def _not_ingested(listing: _Listing) -> list[Outcome]:
    """Outcomes of the paths no shard read: unreadable, or listed in labels.csv but missing."""
    outcomes = [
        Outcome(
            u.rel,
            "",
            SKIPPED if "loop" in u.reason or "alias" in u.reason else QUARANTINED,
            u.reason,
            u.reason.split(":")[0],
        )
        for u in listing.unreadable
    ]
    present = {f.rel for f in listing.files}
    return outcomes + [
        Outcome(rel, "", QUARANTINED, MISSING, MISSING)
        for rel in sorted(set(listing.labels) - present)
    ]


def _check_outcomes(
    config: IngestConfig,
    source: Path,
    listing: _Listing,
    manifest: pd.DataFrame,
    outcomes: list[Outcome],
) -> tuple[dict[str, int], dict[str, int]]:
    """Counts by outcome and by category; fails if too many files were lost, or all were.

    Raises:
        IngestFailed: more than ingest.max_quarantine_fraction lost, or no image ingested.
    """
    by_outcome = dict(Counter(o.outcome for o in outcomes))
    by_category = dict(Counter(o.category for o in outcomes).most_common())
    lost = sum(1 for o in outcomes if o.outcome == QUARANTINED)
    _check_losses(config, listing.n_files, lost, by_category)
    if manifest.empty:
        raise IngestFailed(
            f"no image could be ingested from {source}: {len(outcomes)} file(s) not"
            f" ingested ({by_category}); check the labels and that the files are DICOM images"
        )
    return by_outcome, by_category


def _splits(
    config: IngestConfig,
    manifest: pd.DataFrame,
    hashes: dict[str, str],
    official_splits: dict[str, str] | None,
    held_out: dict[str, str],
) -> pd.Series:
    """Each row's split: the archive's own, or assigned by patient (keeping earlier ones)."""
    if official_splits is not None:
        split_of = {sha: official_splits[rel] for rel, sha in hashes.items()}
        return manifest["content_hash"].map(split_of)
    splits = assign_splits(manifest[["patient_id", "label"]], config.data.split, previous=held_out)
    return manifest["patient_id"].map(splits)


def _log_summary(
    result: IngestResult,
    n_files: int,
    n_reused: int,
    by_outcome: dict[str, int],
    by_category: dict[str, int],
    by_audit: int,
) -> None:
    logger.info(
        "ingested %d sample(s) of %d patient(s) from %d file(s) (%d reused); outcomes %s,"
        " reasons %s; per split and class: %s",
        result.n_images,
        result.n_patients,
        n_files,
        n_reused,
        by_outcome,
        by_category,
        result.counts,
    )
    if by_audit:
        logger.warning(
            "%d image(s) still held an original identifier after de-identification and"
            " were quarantined (quarantine.csv names the kinds and attributes)",
            by_audit,
        )


def _reuse(
    previous: incremental.Previous,
    rel: str,
    sha: str,
    label: int,
    class_names: list[str],
    tmp: Path,
    outcomes: list[Outcome],
) -> list[dict[str, object]]:
    """The previous result of an unchanged file: its rows (relabelled) or its outcome."""
    if sha not in previous.rows_by_hash:
        old = previous.outcomes_by_hash[sha]
        outcomes.append(Outcome(rel, sha, old.outcome, old.reason, old.category))
        return []
    image = f"{IMAGES_DIR}/{sha}.dcm"
    _link(previous.folder / image, tmp / image)
    rows = [dict(r) for r in previous.rows_by_hash[sha]]
    for row in rows:
        row["label"], row["label_name"], row["split"] = label, class_names[label], ""
    return rows


def _table(rows: list[dict[str, object]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)


def _resolve_duplicates(
    manifest: pd.DataFrame,
    outcomes: list[Outcome],
    hashes: dict[str, str],
    labels: dict[str, int],
    class_names: list[str],
    tmp: Path,
) -> tuple[pd.DataFrame, list[Outcome]]:
    """One copy per content; files with the same SOP instance but other content quarantined.

    The first path (in path order) of each content decides its label, whatever order the
    shards finished in.
    """
    ingested = set(manifest["content_hash"])
    first_path: dict[str, str] = {}
    for rel in sorted(hashes):
        sha = hashes[rel]
        if sha not in ingested or rel not in labels:  # unlabelled: already quarantined
            continue
        if sha not in first_path:
            first_path[sha] = rel
            continue
        original = first_path[sha]
        if labels.get(rel) != labels.get(original):
            reason = f"same content as {original} but labelled differently: fix labels.csv"
            outcomes.append(Outcome(rel, sha, QUARANTINED, reason, "conflicting duplicate"))
        else:
            outcomes.append(Outcome(rel, sha, DUPLICATE, f"same content as {original}", DUPLICATE))
    # A duplicate's rows came from the same bytes: keep one set, labelled by the first path.
    unique = manifest.drop_duplicates(["content_hash", "frame"]).copy()
    label_of = {sha: labels[rel] for sha, rel in first_path.items()}
    unique["label"] = unique["content_hash"].map(label_of).astype("int64")
    unique["label_name"] = unique["label"].map(dict(enumerate(class_names))).astype("string")
    per_file = unique.drop_duplicates("content_hash").set_index("content_hash")
    geometry_of = per_file[["sop_instance_id", "rows", "columns", "frames"]].to_dict("index")
    by_sop: dict[str, tuple[str, tuple[object, ...]]] = {}  # sop -> (path, geometry)
    dropped: set[str] = set()
    for sha, rel in sorted(first_path.items(), key=lambda item: item[1]):
        row = geometry_of[sha]
        sop, geometry = str(row["sop_instance_id"]), (row["rows"], row["columns"], row["frames"])
        if sop not in by_sop:
            by_sop[sop] = rel, geometry
            continue
        dropped.add(sha)
        (tmp / IMAGES_DIR / f"{sha}.dcm").unlink(missing_ok=True)
        kept, kept_geometry = by_sop[sop]
        if geometry == kept_geometry:
            # The same instance in another transfer syntax (a transcoded copy): DICOM
            # identifies an instance by its UID, whatever its encoding.
            reason = f"same SOPInstanceUID and image size as {kept}: the same image re-encoded"
            outcomes.append(Outcome(rel, sha, DUPLICATE, reason, DUPLICATE))
        else:
            reason = (
                f"conflict: same SOPInstanceUID as {kept} but a different image"
                f" ({geometry[0]}x{geometry[1]}, {geometry[2]} frame(s)); the first was kept"
            )
            outcomes.append(Outcome(rel, sha, QUARANTINED, reason, "conflicting SOPInstanceUID"))
    kept_rows = unique[~unique["content_hash"].isin(dropped)].reset_index(drop=True)
    return kept_rows, outcomes


def _check_losses(
    config: IngestConfig, n_files: int, lost: int, by_category: dict[str, int]
) -> None:
    limit = config.ingest.max_quarantine_fraction
    if n_files and lost / n_files > limit:
        raise IngestFailed(
            f"{lost} of {n_files} file(s) ({lost / n_files:.1%}) were quarantined, more than"
            f" ingest.max_quarantine_fraction = {limit:.1%}; reasons: {by_category}. Fix the"
            " source (or raise the threshold if these losses are expected); nothing was written"
        )


def _write_quarantine(path: Path, outcomes: list[Outcome], audit: PhiAudit) -> None:
    """The quarantine report; paths and reasons that name a patient are withheld.

    Hospital exports name folders after patients: a path is withheld when it holds any
    identifying value or part of a name ("SMITH/IM1.dcm") of any file, and so is a reason
    that quotes another path (duplicates and conflicts). Other reasons are withheld for
    whole values only (a name part like "First" is an ordinary word there). The sha256
    column still finds a withheld file.
    """

    def safe(text: str, own: tuple[str, ...] = (), *, strict: bool = True) -> str:
        kinds = {*own, *audit.kinds_in_text(text, whole_values_only=not strict)}
        return f"[withheld: contains {', '.join(sorted(kinds))}]" if kinds else text

    records = [
        (
            safe(o.path, o.path_kinds),
            o.sha256,
            o.outcome,
            safe(o.reason, strict=o.category in incremental.DEPENDS_ON_OTHER_FILES),
            safe(o.category, strict=False),
        )
        for o in sorted(outcomes, key=lambda o: o.path)
    ]
    pd.DataFrame(records, columns=QUARANTINE_COLUMNS).to_csv(path, index=False)


def _read_quarantine(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / QUARANTINE_FILE, dtype=str, keep_default_na=False)


def _vocabulary(class_names: list[str]) -> set[str]:
    """The words manifest, quarantine report and log hold whatever the input."""
    words = {*SPLITS, *COLUMNS, *SEG_COLUMNS, *QUARANTINE_COLUMNS, *class_names}
    words |= {QUARANTINED, SKIPPED}
    return words | {DUPLICATE, NO_LABEL, MISSING, "INFO", "WARNING", "ERROR"}


def _audit(
    folder: Path, audit: PhiAudit, images_scanned: int, quarantined: int, vocabulary: set[str]
) -> None:
    """Scan the shared outputs (images were audited by their shard, those with an identifier
    left quarantined); fail if any value leaked into them: that is medflow's own bug."""
    shared = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name != PHI_AUDIT_FILE]
    n_vocabulary = audit.allow_vocabulary(vocabulary)
    # Whole values only: one patient's name part ("First", "Test") is an ordinary word in
    # another file's reason or path. Each image was searched for its own file's parts.
    findings = audit.scan(shared, whole_values_only=True)
    report = {
        "files_scanned": images_scanned + len(shared),
        "images_scanned_by_shards": images_scanned,
        # images whose de-identified copy still held an original identifier: not written
        "images_quarantined_by_audit": quarantined,
        "findings": len(findings),
        "identifying_values_checked": len(audit),
        "values_too_short_to_check": audit.n_unscannable,
        # e.g. a patient named "Test": found in images, not in the manifest (split "test")
        "values_not_checked_in_shared_outputs": n_vocabulary,
    }
    if findings:
        shown = "; ".join(f"{f.file.name}: {f.kind}" for f in findings[:10])
        raise IngestFailed(
            f"PHI audit failed: {len(findings)} original identifier(s) found in the output"
            f" ({shown}); nothing was written. Check the de-identification of these"
            " attributes before ingesting this source"
        )
    write_json_atomic(folder / PHI_AUDIT_FILE, report)


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Copy the medflow log lines of this run into the output (the audit scans them)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("medflow")
    root.addHandler(handler)
    previous_level = root.level
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        with quiet_pydicom():
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()


def _result(
    manifest: pd.DataFrame,
    out_dir: Path,
    outcomes: dict[str, int],
    n_files: int,
    n_reused: int,
    *,
    unchanged: bool = False,
) -> IngestResult:
    triples = sorted(
        f"{h},{f},{n}"
        for h, f, n in zip(manifest.content_hash, manifest.frame, manifest.label_name, strict=True)
    )
    counts = {
        split: {
            name: int(((manifest.split == split) & (manifest.label_name == name)).sum())
            for name in sorted(set(manifest.label_name))
        }
        for split in SPLITS
    }
    return IngestResult(
        n_images=len(manifest),
        n_quarantined=int(outcomes.get(QUARANTINED, 0)),
        n_patients=int(manifest.patient_id.nunique()),
        manifest=out_dir / MANIFEST_FILE,
        data_hash=hashlib.sha256("\n".join(triples).encode()).hexdigest(),
        counts=counts,
        outcomes=outcomes,
        n_files=n_files,
        n_reused=n_reused,
        unchanged=unchanged,
    )
