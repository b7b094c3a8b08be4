"""Which dataset a run is on: a key from `data.source`, `data.class_names` and `data.task`.

The drift reference (data/reference/<key>/) and the champion (reports/champion/<key>/) belong
to a dataset, so other images or renamed classes never meet the demo's. The key is a slug of
the source's name and 8 hex of a hash of source and class names (and the task, when it is
segmentation: a segmentation model never meets a classifier's champion), e.g.
`synthetic-1a2b3c4d`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medflow.config import DataParams

PROFILE_FILE = "profile.json"
CLASSIFICATION = "classification"
_SLUG_MAX = 32
_KEY = re.compile(r"^[a-z0-9][a-z0-9-]*-[0-9a-f]{8}$")


@dataclass(frozen=True)
class Dataset:
    """A data source, its class names and the task on it, named by `key`."""

    source: str
    class_names: tuple[str, ...]
    task: str = CLASSIFICATION

    @classmethod
    def of(cls, data: DataParams) -> Dataset:
        """The dataset that params `data` names."""
        return cls(_normal_source(data.source), tuple(data.class_names), data.task)

    @property
    def key(self) -> str:
        """The folder name of this dataset's reference and champion."""
        return dataset_key(self.source, self.class_names, self.task)

    def as_dict(self) -> dict[str, Any]:
        """Key, source, class names and task, as written into summaries and champion files."""
        return {
            "key": self.key,
            "source": self.source,
            "class_names": list(self.class_names),
            "task": self.task,
        }


def _normal_source(source: str) -> str:
    # `data/x/` and `data/x` are one folder; the source stays as written otherwise (relative
    # to data/, so a clone elsewhere keeps its keys)
    return os.path.normpath(source.strip()) if source.strip() else source


def dataset_key(source: str, class_names: Sequence[str], task: str = CLASSIFICATION) -> str:
    """`<slug>-<8 hex>`: the slug is the source's last path part without its suffix; the hash
    is of source and class names, and of the task unless it is classification (so the keys
    of classification datasets are those of before the task existed)."""
    source = _normal_source(source)
    name = Path(source).name
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix else name
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:_SLUG_MAX].strip("-") or "data"
    named = [source, list(class_names)] + ([] if task == CLASSIFICATION else [task])
    digest = hashlib.sha256(json.dumps(named).encode()).hexdigest()
    return f"{slug}-{digest[:8]}"


def check_key(key: str) -> str:
    """`key` if it has the form dataset_key gives; ValueError naming it otherwise (a key
    becomes a folder name: no path separators or dots)."""
    if not _KEY.match(key):
        raise ValueError(
            f"dataset key {key!r} is not of the form <name>-<8 hex digits>"
            " (e.g. synthetic-1a2b3c4d; `medflow models datasets` lists the known ones)"
        )
    return key


def reference_profile(reference_dir: Path, key: str) -> Path:
    """The drift reference of dataset `key` under the references folder."""
    return Path(reference_dir) / check_key(key) / PROFILE_FILE


def champion_folder(champion_root: Path, key: str) -> Path:
    """The champion registry folder of dataset `key` under the champions folder."""
    return Path(champion_root) / check_key(key)


def known_keys(root: Path) -> list[str]:
    """The dataset keys that have a folder under `root` (references or champions)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _KEY.match(p.name))
