"""What a source folder holds: its files (symlinks followed, loops caught) and their labels."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medflow.errors import IngestFailed

LABELS_FILE = "labels.csv"


@dataclass(frozen=True)
class SourceFile:
    rel: str  # POSIX path relative to the source folder
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Unreadable:
    """A path that is not a file to read: a symlink loop, a dangling link, a permission error."""

    rel: str
    reason: str


def walk_source(source: Path) -> tuple[list[SourceFile], list[Unreadable]]:
    """Every regular file under source, recursively, following symlinks, sorted by path.

    Hospital shares often link folders together; a link back to a folder already read
    (a loop) is reported, not followed forever.
    """
    files: list[SourceFile] = []
    problems: list[Unreadable] = []
    seen_dirs: set[tuple[int, int]] = set()

    def walk(folder: Path, rel: str) -> None:
        st = folder.stat()
        if (st.st_dev, st.st_ino) in seen_dirs:
            problems.append(
                Unreadable(rel, "directory symlink loop: leads back to a folder already read")
            )
            return
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            problems.append(Unreadable(rel or ".", f"folder cannot be listed: {exc.strerror}"))
            return
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir(follow_symlinks=True):
                    walk(Path(entry.path), child)
                elif entry.is_file(follow_symlinks=True):
                    est = entry.stat(follow_symlinks=True)
                    files.append(SourceFile(child, est.st_size, est.st_mtime_ns))
                elif entry.is_symlink():
                    problems.append(Unreadable(child, "dangling symbolic link"))
                else:
                    problems.append(Unreadable(child, "not a regular file (device, socket, ...)"))
            except OSError as exc:
                problems.append(Unreadable(child, f"cannot be read: {exc.strerror}"))

    walk(source, "")
    files.sort(key=lambda f: f.rel)
    return files, problems


def read_labels(source: Path, rels: list[str], class_names: list[str]) -> dict[str, int]:
    """{relative path: class index} from source/labels.csv, else from class-named folders.

    labels.csv has the columns path,label (label = a class name or its index). Without it,
    the first folder of each path that is a class name gives the label (normal/a.dcm).
    """
    if (source / LABELS_FILE).is_file():
        return _labels_from_csv(source / LABELS_FILE, class_names)
    index = {name: i for i, name in enumerate(class_names)}
    labels = {}
    for rel in rels:
        top = rel.split("/", 1)[0] if "/" in rel else ""
        if top in index:
            labels[rel] = index[top]
    if not labels:
        raise IngestFailed(
            f"no labels for {source}: add {LABELS_FILE} with the columns path,label (path relative"
            " to that folder, label = a class name or its index in data.class_names), or put the"
            f" images in one folder per class named after data.class_names {class_names}"
        )
    return labels


def _labels_from_csv(path: Path, class_names: list[str]) -> dict[str, int]:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise IngestFailed(f"{path} is not a readable CSV file: {exc}") from exc
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise IngestFailed(
            f"{path} lacks the column(s) {sorted(missing)}; expected the header path,label"
            f" (found {list(table.columns)})"
        )
    index = {name: i for i, name in enumerate(class_names)}
    labels: dict[str, int] = {}
    unknown: set[str] = set()
    conflicting: set[str] = set()
    for raw_path, raw_label in zip(table["path"], table["label"], strict=True):
        rel = raw_path.strip().replace("\\", "/").removeprefix("./")
        label_text = raw_label.strip()
        if label_text in index:
            label = index[label_text]
        elif label_text.isdigit() and int(label_text) < len(class_names):
            label = int(label_text)
        else:
            unknown.add(label_text)
            continue
        if labels.get(rel, label) != label:
            conflicting.add(rel)
        labels[rel] = label
    problems = []
    if unknown:
        problems.append(
            f"{len(unknown)} unknown label value(s) {sorted(unknown)[:10]}; expected one of"
            f" data.class_names {class_names} or an index 0..{len(class_names) - 1}"
        )
    if conflicting:
        problems.append(f"{len(conflicting)} path(s) listed twice with different labels")
    if problems:
        raise IngestFailed(f"{path}: " + "; ".join(problems))
    return labels
