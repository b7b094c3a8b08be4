"""No patient identifier of the source DICOM reaches anything the pipeline writes.

After the session's real `dvc repro` of the synthetic data (conftest.py `reproduced`), every
identifying value of every source file (names, IDs, birth dates, accession numbers, the
original UIDs) is looked for in: every file the pipeline wrote in the workspace (ingested
DICOM, preprocessed arrays, models, reports, Data Docs, dvc.lock), the model store entry and
the Bento that package built, and the log of the run. Only the source folder itself and DVC's
cache (copies by content hash, of the source too) are left out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydicom
import pytest
from pydicom.misc import is_dicom

# What the synthetic source sets (medflow.data.synthetic) and de-identification must replace.
KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)
SKIPPED = {".dvc", ".git", "synthetic"}  # DVC's cache, git's objects, the source itself


def _identifiers(source: Path) -> dict[bytes, str]:
    """Each identifying value of the source files (bytes to look for) -> what it is."""
    found: dict[bytes, str] = {}
    dicoms = sorted(p for p in source.rglob("*") if p.is_file() and is_dicom(p))
    assert dicoms, f"no DICOM file in {source}"
    for path in dicoms:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in KEYWORDS:
            value = str(ds.get(keyword, "") or "").strip()
            if len(value) < 8:  # a short value could occur by chance in binary data
                continue
            found[value.encode()] = keyword
            if keyword.endswith("Name"):  # also as written out: "Last First", "First Last"
                parts = value.split("^")
                found[" ".join(parts).encode()] = keyword
                found[" ".join(reversed(parts)).encode()] = keyword
    return found


def _written(repo: Path) -> list[Path]:
    files = []
    for path in repo.rglob("*"):
        rel = path.relative_to(repo).parts
        if path.is_file() and not SKIPPED & set(rel[:2]):
            files.append(path)
    return files


def _leaks(files: list[Path], identifiers: dict[bytes, str], root: Path) -> list[str]:
    # one regex over all values; digits-only values (dates) must not sit inside a longer number
    pattern = re.compile(
        b"|".join(
            rb"(?<![0-9.])" + re.escape(v) + rb"(?![0-9.])" if v.isdigit() else re.escape(v)
            for v in sorted(identifiers, key=len, reverse=True)
        )
    )
    leaks = []
    for path in files:
        for match in pattern.finditer(path.read_bytes()):
            leaks.append(f"{path.relative_to(root)}: {identifiers[match.group()]}")
            break
    return leaks


@pytest.fixture(scope="module")
def identifiers(reproduced: tuple[Path, str]) -> dict[bytes, str]:
    repo, _ = reproduced
    found = _identifiers(repo / "data" / "synthetic")
    # the check is only as good as what it looks for
    kinds = set(found.values())
    assert {"PatientName", "PatientID", "AccessionNumber", "SOPInstanceUID"} <= kinds, kinds
    return found


def test_no_identifier_in_any_pipeline_output(reproduced, identifiers) -> None:
    repo, _ = reproduced
    files = _written(repo)
    written = {p.relative_to(repo).parts[0] for p in files}
    assert {"data", "models", "reports"} <= written, written  # the outputs are there
    assert any(p.suffix == ".dcm" or "ingested" in p.parts for p in files)
    assert not _leaks(files, identifiers, repo)


def test_no_identifier_in_the_model_store_or_the_bento(reproduced, identifiers) -> None:
    import bentoml

    repo, _ = reproduced
    bento = json.loads((repo / "reports" / "bento.json").read_text())
    model_dir = Path(bentoml.models.get(bento["model_tag"]).path)
    bento_dir = Path(bentoml.get(bento["bento_tag"]).path)
    files = [p for d in (model_dir, bento_dir) for p in d.rglob("*") if p.is_file()]
    assert any(p.name == "model.pt" for p in files) and any(p.suffix == ".py" for p in files)
    assert not _leaks(files, identifiers, model_dir.parents[2])


def test_no_identifier_in_the_run_log(reproduced, identifiers) -> None:
    _, log = reproduced
    assert "Running stage 'ingest'" in log
    leaks = [kind for value, kind in identifiers.items() if value.decode() in log]
    assert not leaks, leaks


def test_the_scan_finds_a_planted_identifier(tmp_path: Path) -> None:
    """The scan itself: a value planted in text or binary is found; a date inside a longer
    number (a float in a CSV) is not."""
    ids = {b"MRN123456780042": "PatientID", b"19580212": "PatientBirthDate"}
    (tmp_path / "card.md").write_text("patient MRN123456780042 was seen\n")
    (tmp_path / "w.bin").write_bytes(bytes(range(256)) + b"19580212" + bytes(8))
    (tmp_path / "m.csv").write_text("auroc,0.1958021234\n")
    files = sorted(p for p in tmp_path.iterdir())
    assert _leaks(files, ids, tmp_path) == [
        "card.md: PatientID",
        "w.bin: PatientBirthDate",
    ]
