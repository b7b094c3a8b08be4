"""sha256 of files and of folder listings."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: Path) -> str:
    """The sha256 of the file's bytes; "" when there is no such file."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def regular_files(folder: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    """Every regular file under folder, in path order, each under its one real path: symlinks
    (to files or folders) are not followed. `exclude`: relative POSIX paths left out."""
    found = []
    for parent, _, names in os.walk(folder, followlinks=False):
        for name in names:
            path = Path(parent) / name
            rel = path.relative_to(folder).as_posix()
            if rel not in exclude and path.is_file() and not path.is_symlink():
                found.append(path)
    return sorted(found)


def tree_hashes(folder: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """{relative POSIX path: sha256} of every regular file under folder (regular_files)."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p) for p in regular_files(folder, exclude)
    }
