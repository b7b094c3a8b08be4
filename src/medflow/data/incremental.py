"""What the last ingest into a folder already did, so a re-ingest only does the new work.

Per source file, keyed by an HMAC of its path (folder names can name patients): size, mtime
and content hash, plus a fingerprint of the settings. Same size and time: not read again;
same content hash: its de-identified image and manifest rows are reused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medflow.config import SplitParams
from medflow.data.manifest import COLUMNS, MANIFEST_FILE, SEG_COLUMNS, SEGMENTATIONS_FILE
from medflow.data.pairing import PAIRING_CATEGORIES
from medflow.data.shard import DUPLICATE, NO_LABEL, SEGMENTATION, Outcome, ShardSettings
from medflow.data.sources import SourceFile

logger = logging.getLogger(__name__)

STATE_FILE = "ingest_state.json"
QUARANTINE_FILE = "quarantine.csv"
FORMAT = 6  # bump when the output of a file changes for the same settings
# Outcomes decided by comparing a file with others: decided again on every run.
DEPENDS_ON_OTHER_FILES = (
    DUPLICATE,
    "conflicting duplicate",
    "conflicting SOPInstanceUID",
    *PAIRING_CATEGORIES,
)


def path_token(key: bytes, rel: str) -> str:
    """The state file's key for a source path: an HMAC, so the path itself is not stored."""
    return hmac.new(key, f"medflow/path/{rel}".encode(), hashlib.sha256).hexdigest()[:32]


def fingerprint(key: bytes, settings: ShardSettings) -> str:
    """Changes whenever the same file would be ingested differently."""
    text = json.dumps(
        {
            "format": FORMAT,
            "key": hmac.new(key, b"medflow/key-fingerprint", hashlib.sha256).hexdigest(),
            "frames": settings.frames,
            "max_frame_pixels": settings.max_frame_pixels,
            "burned_in": settings.allow_burned_in_annotation,
            "burned_in_text": settings.burned_in_text.model_dump(),
            "deid": repr(settings.deid),
            "task": settings.task,
            # a SEG's segments are checked against the class names when it is read
            "classes": list(settings.class_names) if settings.task == SEGMENTATION else None,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def listing_digest(key: bytes, files: list[SourceFile], labels: dict[str, int], extra: str) -> str:
    """One hash of the file list with sizes, times and labels: equal means nothing changed."""
    digest = hashlib.sha256(extra.encode())
    for f in files:
        token = path_token(key, f.rel)
        digest.update(f"{token}:{f.size}:{f.mtime_ns}:{labels.get(f.rel)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Previous:
    """The last ingest's outputs in `folder`, valid for the current settings."""

    folder: Path
    listing: str
    known: dict[str, tuple[int, int, str]]  # path token -> (size, mtime_ns, sha256)
    rows_by_hash: dict[str, list[dict[str, object]]]
    outcomes_by_hash: dict[str, Outcome]
    # SEG objects kept (segmentation): content hash -> segmentations.csv row
    segs_by_hash: dict[str, dict[str, object]] = field(default_factory=dict)

    def sha_of(self, key: bytes, f: SourceFile) -> str | None:
        """The content hash of f if it is unchanged since the last ingest, without reading it."""
        known = self.known.get(path_token(key, f.rel))
        if known is not None and known[0] == f.size and known[1] == f.mtime_ns:
            return known[2]
        return None


def load_previous(folder: Path, settings_fingerprint: str) -> Previous | None:
    """The previous ingest in folder, or None (absent, from other settings, or unreadable)."""
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        return None
    try:
        state = json.loads(state_path.read_text())
        if state.get("fingerprint") != settings_fingerprint:
            logger.info("settings or key changed since the last ingest: ingesting everything")
            return None
        if state.get("outputs") != output_hashes(folder):
            logger.warning(
                "the last ingest's manifest or quarantine report was changed after it was"
                " written: ingesting everything again"
            )
            return None
        manifest = pd.read_csv(
            folder / MANIFEST_FILE, dtype={k: v for k, v in COLUMNS.items() if v == "string"}
        )
        quarantine = pd.read_csv(folder / QUARANTINE_FILE, dtype=str, keep_default_na=False)
        segs = _previous_segs(folder)
    except Exception as exc:  # a damaged previous output is only a lost shortcut
        logger.warning("previous ingest output unusable (%s): ingesting everything", exc)
        return None
    rows: dict[str, list[dict[str, object]]] = {}
    for row in manifest.to_dict("records"):
        if (folder / str(row["file"])).is_file():
            rows.setdefault(str(row["content_hash"]), []).append(row)
    outcomes = {
        r["sha256"]: Outcome(r["path"], r["sha256"], r["outcome"], r["reason"], r["category"])
        for r in quarantine.to_dict("records")
        if r["sha256"] and r["category"] not in DEPENDS_ON_OTHER_FILES and r["reason"] != NO_LABEL
    }
    return Previous(
        folder=folder,
        listing=state.get("listing", ""),
        known={t: (int(v[0]), int(v[1]), str(v[2])) for t, v in state.get("files", {}).items()},
        rows_by_hash=rows,
        outcomes_by_hash=outcomes,
        segs_by_hash=segs,
    )


def _previous_segs(folder: Path) -> dict[str, dict[str, object]]:
    """The SEG objects the last ingest kept whose file is still there, by content hash."""
    if not (folder / SEGMENTATIONS_FILE).is_file():
        return {}
    table = pd.read_csv(folder / SEGMENTATIONS_FILE, dtype=str, keep_default_na=False)
    if list(table.columns) != list(SEG_COLUMNS):
        raise ValueError(f"{SEGMENTATIONS_FILE} has the columns {list(table.columns)}")
    return {
        str(r["content_hash"]): r
        for r in table.to_dict("records")
        if (folder / str(r["file"])).is_file()
    }


def split_fingerprint(key: bytes, split: SplitParams) -> str:
    """Equal when patient pseudonyms and split params are: earlier splits then still hold."""
    text = json.dumps(
        {"key": hmac.new(key, b"medflow/key-fingerprint", hashlib.sha256).hexdigest()}
        | split.model_dump(),
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def previous_splits(folder: Path, key: bytes, split: SplitParams) -> dict[str, str]:
    """patient_id -> split of the last ingest into folder, if made with the same key and
    split params (whatever else changed); empty otherwise."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        if state.get("split") != split_fingerprint(key, split):
            return {}
        if state.get("outputs") != output_hashes(folder):
            return {}  # edited since: not a split this project made
        manifest = pd.read_csv(folder / MANIFEST_FILE, dtype=str, keep_default_na=False)
        return dict(zip(manifest.patient_id, manifest.split, strict=True))
    except (OSError, ValueError, KeyError, AttributeError):
        return {}


def output_hashes(folder: Path) -> dict[str, str]:
    """sha256 of the outputs a re-run would otherwise trust as they are."""
    return {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in (MANIFEST_FILE, QUARANTINE_FILE, SEGMENTATIONS_FILE)
        if (folder / name).is_file()
    }


def state(
    key: bytes,
    settings_fingerprint: str,
    listing: str,
    files: list[SourceFile],
    hashes: dict[str, str],
    split: SplitParams,
    folder: Path,
) -> dict[str, object]:
    """The state file's content for the ingest written to folder (no path or value in clear)."""
    return {
        "format": FORMAT,
        "fingerprint": settings_fingerprint,
        "split": split_fingerprint(key, split),
        "listing": listing,
        "outputs": output_hashes(folder),
        "files": {
            path_token(key, f.rel): [f.size, f.mtime_ns, hashes[f.rel]]
            for f in files
            if f.rel in hashes
        },
    }
