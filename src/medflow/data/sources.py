"""What a source folder holds: its files (symlinks followed, loops and aliases caught), labels."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medflow.errors import IngestFailed

LABELS_FILE = "labels.csv"


@dataclass(frozen=True)
class SourceFile:
    """A regular file of the source folder, as listed."""

    rel: str  # POSIX path relative to the source folder
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Unreadable:
    """A path not read as a file: a symlink loop or alias, a dangling link, a permission error."""

    rel: str
    reason: str


_LOOP = "directory symlink loop: leads back to a folder that contains it"
_ALIAS_INSIDE = (
    "directory symlink alias: leads to a folder inside the source; its files are listed under"
    " their real path"
)
_ALIAS_LINKED = (
    "directory symlink alias: leads to a folder outside the source that another link already"
    " lists; its files are listed under that link"
)
_ALIAS_REACHED = (
    "directory symlink alias: a folder reached through a link that is also read under another"
    " path; its files are listed there"
)


def walk_source(source: Path) -> tuple[list[SourceFile], list[Unreadable]]:
    """Every regular file under source, recursively, following symlinks, sorted by path.

    Hospital shares often link folders together, so each real folder is read once, under one
    path, whatever the names sort like: a folder inside the source under its real path, a
    folder outside it under the link to it (the first by path of several links to one folder,
    a link to an outer folder before links into it). A link to a folder that contains it (a
    loop) and a second path to a folder already listed (an alias) are reported, not followed.
    """
    files: list[SourceFile] = []
    problems: list[Unreadable] = []
    # Real folders walked from the top (the source, each followed link's target): a folder
    # inside one of them is listed with it. Links to other outside folders wait in `pending`.
    top = source.resolve(strict=True)
    roots = {top}
    pending: list[tuple[str, Path]] = []

    def walk(folder: Path, rel: str) -> None:
        # folder is a real path (no symlink in it), rel the path its files are listed under
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            problems.append(Unreadable(rel or ".", f"folder cannot be listed: {exc.strerror}"))
            return
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir(follow_symlinks=True):
                    if entry.is_symlink():
                        link(folder, child, Path(os.path.realpath(entry.path)))
                    elif folder / entry.name in roots:  # only under a folder outside the source
                        problems.append(Unreadable(child, _ALIAS_REACHED))
                    else:
                        walk(folder / entry.name, child)
                elif entry.is_file(follow_symlinks=True):
                    est = entry.stat(follow_symlinks=True)
                    files.append(SourceFile(child, est.st_size, est.st_mtime_ns))
                elif entry.is_symlink():
                    problems.append(Unreadable(child, "dangling symbolic link"))
                else:
                    problems.append(Unreadable(child, "not a regular file (device, socket, ...)"))
            except OSError as exc:
                problems.append(Unreadable(child, f"cannot be read: {exc.strerror}"))

    def link(folder: Path, rel: str, target: Path) -> None:
        if folder.is_relative_to(target):
            problems.append(Unreadable(rel, _LOOP))
        elif target.is_relative_to(top):
            problems.append(Unreadable(rel, _ALIAS_INSIDE))
        elif any(target.is_relative_to(root) for root in roots):
            problems.append(Unreadable(rel, _ALIAS_LINKED))
        else:
            pending.append((rel, target))

    walk(top, "")
    # Links found in one round are followed in the next, outer folders first, so a link into
    # a folder that another link lists is an alias whichever name sorts first.
    while pending:
        chosen: list[tuple[Path, str]] = []
        for rel, target in sorted(pending, key=lambda p: (p[1].parts, p[0])):
            if any(target.is_relative_to(root) for root in roots):
                problems.append(Unreadable(rel, _ALIAS_LINKED))
            else:
                roots.add(target)
                chosen.append((target, rel))
        pending.clear()
        for target, rel in chosen:
            walk(target, rel)
    files.sort(key=lambda f: f.rel)
    problems.sort(key=lambda u: u.rel)
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


def read_mask_paths(source: Path) -> dict[str, str]:
    """{image path: mask path} from the `mask` column of source/labels.csv (segmentation),
    both relative to source; empty without labels.csv or without that column.

    Rows with an empty mask name no mask (the image's mask comes from SEG objects, or is
    empty). Raises IngestFailed when the file is unreadable, lacks `path`, or names one
    image twice with different masks.
    """
    path = source / LABELS_FILE
    if not path.is_file():
        return {}
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise IngestFailed(f"{path} is not a readable CSV file: {exc}") from exc
    if "mask" not in table.columns:
        return {}
    if "path" not in table.columns:
        raise IngestFailed(
            f"{path} lacks the column 'path'; expected the header path,mask (found"
            f" {list(table.columns)})"
        )
    masks: dict[str, str] = {}
    conflicting: set[str] = set()
    for raw_path, raw_mask in zip(table["path"], table["mask"], strict=True):
        rel, mask = (_relative(v) for v in (raw_path, raw_mask))
        if not rel or not mask:
            continue
        if masks.get(rel, mask) != mask:
            conflicting.add(rel)
        masks[rel] = mask
    if conflicting:
        raise IngestFailed(f"{path}: {len(conflicting)} path(s) listed twice with different masks")
    return masks


def _relative(value: str) -> str:
    return value.strip().replace("\\", "/").removeprefix("./")
