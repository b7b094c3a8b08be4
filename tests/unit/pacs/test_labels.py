"""Study labels keyed by StudyInstanceUID or AccessionNumber."""

from __future__ import annotations

from pathlib import Path

import pytest

from medflow.errors import IngestFailed
from medflow.pacs.labels import read_study_labels

CLASSES = ["normal", "lesion"]


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_either_key_gives_the_label(tmp_path: Path):
    path = _csv(tmp_path, "StudyInstanceUID,AccessionNumber,label\n1.2.3,,lesion\n,ACC9,0\n")
    labels = read_study_labels(path, CLASSES)
    assert labels.label_of("1.2.3") == 1
    assert labels.label_of("9.9.9", "ACC9") == 0
    assert labels.label_of("9.9.9", "ACC1") is None
    assert len(labels) == 2


def test_the_uid_wins_over_the_accession_number(tmp_path: Path):
    path = _csv(tmp_path, "StudyInstanceUID,AccessionNumber,label\n1.2.3,ACC1,1\n4.5.6,ACC2,0\n")
    assert read_study_labels(path, CLASSES).label_of("1.2.3", "ACC2") == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,label\na.dcm,1\n", "needs the column label and StudyInstanceUID or AccessionNumber"),
        ("AccessionNumber,label\nACC1,tumour\n", "1 unknown label value"),
        ("AccessionNumber,label\nACC1,1\nACC1,0\n", "1 study key\\(s\\) listed twice"),
    ],
)
def test_bad_files_are_named_without_quoting_keys(tmp_path: Path, text: str, message: str):
    with pytest.raises(IngestFailed, match=message) as err:
        read_study_labels(_csv(tmp_path, text), CLASSES)
    assert "ACC1" not in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_a_missing_file_says_what_it_must_hold(tmp_path: Path):
    with pytest.raises(IngestFailed, match="labels file not found.*StudyInstanceUID"):
        read_study_labels(tmp_path / "nope.csv", CLASSES)
