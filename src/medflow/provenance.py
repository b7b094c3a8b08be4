"""Provenance carried by every model artifact: git revision and library versions."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

_LIBRARIES = (
    "medflow",
    "torch",
    "pytorch-lightning",
    "torchmetrics",
    "pydicom",
    "numpy",
    "great-expectations",
    "dvc",
    "prefect",
    "bentoml",
)


def git_revision(root: Path | None = None) -> str:
    """The commit of the code that produced an artifact, with '-dirty' if the tree has changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        return rev + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
