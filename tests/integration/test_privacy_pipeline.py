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

import pytest

from tests.helpers.identifiers import identifying_values

SKIPPED = {".dvc", ".git", "synthetic"}  # DVC's cache, git's objects, the source itself


def _identifiers(source: Path) -> dict[bytes, str]:
    """Each identifying value of the source files (bytes to look for) -> what it is; only
    values of 8 characters or more: a shorter one could occur by chance in binary data."""
    found = identifying_values(source, min_length=8)
    assert found, f"no identifying value in {source}"
    return {value.encode(): keyword for value, keyword in found.items()}


def _written(repo: Path) -> list[Path]:
    files = []
    for path in repo.rglob("*"):
        rel = path.relative_to(repo).parts
        if path.is_file() and not SKIPPED & set(rel[:2]):
            files.append(path)
    return files


# Identifiers are made of these bytes (names: letters and ^; IDs; dates; UIDs: digits and
# dots). Every maximal run of them in a file is a token, looked up in a set: one pass over the
# bytes, where one regex of a thousand alternatives took 50 s over the pipeline's outputs.
_TOKEN = re.compile(rb"[A-Za-z0-9.^]+")


def _leaks(files: list[Path], identifiers: dict[bytes, str], root: Path) -> list[str]:
    """Files holding an identifier as a whole token (so a date inside a longer number, as in
    a float, is not one), or a name as two tokens separated by a space."""
    leaks = []
    for path in files:
        data = path.read_bytes()
        previous = None
        for match in _TOKEN.finditer(data):
            token = match.group().rstrip(b".")  # a UID or ID at the end of a sentence
            pair = None
            if previous is not None and previous.end() + 1 == match.start():
                if data[previous.end() : match.start()] == b" ":
                    pair = previous.group() + b" " + token
            previous = match
            kind = identifiers.get(token) or (identifiers.get(pair) if pair else None)
            if kind:
                leaks.append(f"{path.relative_to(root)}: {kind}")
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
    # the test-split DICOM files stored for infra-validation
    # (medflow.registry.packaging.write_reference)
    assert any(p.parent.name == "reference" and p.suffix == ".dcm" for p in files)
    assert not _leaks(files, identifiers, model_dir.parents[2])


def test_no_identifier_in_the_run_log(reproduced, identifiers) -> None:
    _, log = reproduced
    assert "Running stage 'ingest'" in log
    leaks = [kind for value, kind in identifiers.items() if value.decode() in log]
    assert not leaks, leaks


def test_the_scan_finds_a_planted_identifier(tmp_path: Path) -> None:
    """The scan itself: a value planted in text or binary is found; a date inside a longer
    number (a float in a CSV) is not."""
    ids = {
        b"MRN123456780042": "PatientID",
        b"19580212": "PatientBirthDate",
        b"Mibu Kotaren": "PatientName",
    }
    (tmp_path / "card.md").write_text("patient MRN123456780042 was seen\n")
    (tmp_path / "log.txt").write_text("referred by Dr. Mibu Kotaren.\nMibu, Kotaren\n")
    (tmp_path / "w.bin").write_bytes(bytes(range(256)) + b"19580212" + bytes(8))
    (tmp_path / "m.csv").write_text("auroc,0.1958021234\n")
    files = sorted(p for p in tmp_path.iterdir())
    assert _leaks(files, ids, tmp_path) == [
        "card.md: PatientID",
        "log.txt: PatientName",
        "w.bin: PatientBirthDate",
    ]
