"""Labels of PACS studies: a CSV keyed by StudyInstanceUID or AccessionNumber.

Hospital label lists name studies, not files. The pull stage and the receiver both look a
study up here; the file itself is user input (like a source folder), never an artifact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medflow.errors import IngestFailed

KEYS = ("StudyInstanceUID", "AccessionNumber")


@dataclass(frozen=True)
class StudyLabels:
    """Class index by StudyInstanceUID and by AccessionNumber (either may be empty)."""

    by_study: dict[str, int] = field(default_factory=dict)
    by_accession: dict[str, int] = field(default_factory=dict)

    def label_of(self, study_uid: str, accession: str = "") -> int | None:
        """The study's class index, by its UID first, then its accession number."""
        if study_uid in self.by_study:
            return self.by_study[study_uid]
        if accession and accession in self.by_accession:
            return self.by_accession[accession]
        return None

    def __len__(self) -> int:
        return len(self.by_study) + len(self.by_accession)


def read_study_labels(path: Path, class_names: list[str]) -> StudyLabels:
    """The labels CSV: a column StudyInstanceUID and/or AccessionNumber, and a column label
    (a class name or its index in class_names).

    Raises:
        IngestFailed: the file is missing or unreadable, lacks the columns, holds unknown
            labels, or gives one study two labels. The message names the file and counts the
            rows, never quoting a UID or an accession number.
    """
    if not path.is_file():
        raise IngestFailed(
            f"labels file not found: {path} (a CSV with the columns StudyInstanceUID or"
            " AccessionNumber, and label; docs/pacs.md)"
        )
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise IngestFailed(f"{path} is not a readable CSV file: {type(exc).__name__}") from None
    keys = [k for k in KEYS if k in table.columns]
    if "label" not in table.columns or not keys:
        raise IngestFailed(
            f"{path} needs the column label and StudyInstanceUID or AccessionNumber (found"
            f" {list(table.columns)})"
        )
    index = {name: i for i, name in enumerate(class_names)}
    maps: dict[str, dict[str, int]] = {k: {} for k in KEYS}
    unknown: set[str] = set()
    conflicting = 0
    for row_number, row in enumerate(table.itertuples(index=False), start=2):
        values = row._asdict()
        text = str(values["label"]).strip()
        if text in index:
            label = index[text]
        elif text.isdigit() and int(text) < len(class_names):
            label = int(text)
        else:
            unknown.add(f"{text!r} (line {row_number})" if len(unknown) < 10 else text)
            continue
        for key in keys:
            value = str(values[key]).strip()
            if not value:
                continue
            if maps[key].get(value, label) != label:
                conflicting += 1
            maps[key][value] = label
    problems = []
    if unknown:
        problems.append(
            f"{len(unknown)} unknown label value(s) {sorted(unknown)[:10]}; expected one of"
            f" {class_names} or an index 0..{len(class_names) - 1}"
        )
    if conflicting:
        problems.append(f"{conflicting} study key(s) listed twice with different labels")
    if problems:
        raise IngestFailed(f"{path}: " + "; ".join(problems))
    return StudyLabels(maps["StudyInstanceUID"], maps["AccessionNumber"])
