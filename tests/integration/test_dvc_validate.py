"""`dvc repro` stops at validate, naming the problem: a blank image, a leaked patient, a PHI column.

The clean synthetic dataset passed validate in the session's real `dvc repro` (conftest.py
`reproduced`): its Data Docs must open from the output folder, here in a moved copy. Each broken
dataset then gets its own clone of that copy, so that only what the breakage touches runs again.
A blank image comes in through a real source folder and a real ingest. A leaked patient or an
identifying column cannot come out of our ingest, so they are written into the ingest output by
hand and only the validate stage is reproduced (`dvc repro -s validate`): a full `dvc repro`
would notice the edited output and ingest again.
"""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medflow.config import load_params
from medflow.data.dataset import Dataset, reference_profile
from tests.helpers.pipeline_copy import clone, run, set_params
from tests.helpers.stages import ran_stages, stages_after

DOWNSTREAM = stages_after("validate")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


def local_links(page: Path) -> list[str]:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return [
        link.split("#")[0].split("?")[0]
        for link in parser.links
        if not re.match(r"^(https?:|mailto:|javascript:|#|data:)", link) and link.split("#")[0]
    ]


@pytest.fixture
def repo(reproduced: tuple[Path, str], tmp_path: Path) -> Path:
    """A private clone of the session's reproduced copy: clean data, validated, in dvc.lock."""
    src, _ = reproduced
    return clone(src, tmp_path / "repo")


def test_the_clean_dataset_passes_with_data_docs_that_open_from_the_folder(repo: Path) -> None:
    summary = json.loads((repo / "data/validation/summary.json").read_text())
    assert summary["success"] is True, summary["failures"]
    key = Dataset.of(load_params(repo / "params.yaml").data).key
    assert reference_profile(repo / "data/reference", key).is_file()
    assert summary["dataset"]["key"] == key
    index = repo / "data/validation/docs/index.html"
    text = index.read_text(encoding="utf-8")
    # result pages are listed by the index's script, suite pages and assets by plain links
    validation_pages = sorted(set(re.findall(r"validations/[^\"'\s]+\.html", text)))
    assert validation_pages, "the Data Docs index names no validation result page"
    for link in [*local_links(index), *validation_pages]:  # all resolve inside the folder
        assert not link.startswith("/"), f"absolute link {link} breaks when the folder moves"
        assert (index.parent / link).resolve().is_file(), f"{index} links missing {link}"
    page = (index.parent / validation_pages[0]).read_text(encoding="utf-8")
    assert "expect_" in page or "Expect" in page


def _stopped_at_validate(repo: Path, *, single: bool) -> str:
    cmd = ["dvc", "repro", "-s", "validate"] if single else ["dvc", "repro"]
    proc = run(cmd, repo, check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0, said
    assert "validation FAILED" in said, said
    assert not ran_stages(proc.stdout) & set(DOWNSTREAM), said
    summary = json.loads((repo / "data/validation/summary.json").read_text())
    assert summary["success"] is False
    return said


def test_a_blank_image_stops_the_pipeline_at_validate(repo: Path) -> None:
    source = repo / "data" / "hospital"
    shutil.copytree(repo / "data" / "synthetic", source)
    original = sorted(source.rglob("*.dcm"))[0]
    ds = pydicom.dcmread(original)
    blank = np.full_like(ds.pixel_array, 17)
    ds.PixelData = blank.tobytes()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(source / "blank.dcm", enforce_file_format=True)
    label = pd.read_csv(source / "labels.csv").label.iloc[0]
    with (source / "labels.csv").open("a") as fh:
        fh.write(f"blank.dcm,{label}\n")
    set_params(repo, {"data": {"source": "hospital"}})
    said = _stopped_at_validate(repo, single=False)
    assert "pixel_constant_fraction" in said or "pixel_std" in said, said
    manifest = pd.read_csv(repo / "data/ingested/manifest.csv", dtype=str)
    blank_ids = manifest.image_id[manifest.pixel_std.astype(float) == 0].tolist()
    assert len(blank_ids) == 1 and blank_ids[0] in said, (blank_ids, said)


def _clean_manifest(repo: Path) -> pd.DataFrame:
    """The clone's ingest output, as the `dvc repro` whose validate passed left it."""
    assert json.loads((repo / "data/validation/summary.json").read_text())["success"] is True
    return pd.read_csv(repo / "data/ingested/manifest.csv", dtype=str, keep_default_na=False)


def test_a_leaked_patient_stops_validate_naming_the_pseudonym(repo: Path) -> None:
    manifest = _clean_manifest(repo)
    patient = manifest.patient_id[manifest.split == "train"].iloc[0]
    first_image = manifest.index[manifest.patient_id == patient][0]
    manifest.loc[first_image, "split"] = "test"
    manifest.to_csv(repo / "data/ingested/manifest.csv", index=False)
    said = _stopped_at_validate(repo, single=True)
    assert "patient_leakage" in said and patient in said, said


def test_an_identifying_column_stops_validate_naming_it(repo: Path) -> None:
    manifest = _clean_manifest(repo)
    manifest["PatientName"] = "Doe^Jane"
    manifest.to_csv(repo / "data/ingested/manifest.csv", index=False)
    said = _stopped_at_validate(repo, single=True)
    assert "identifying_columns" in said and "PatientName" in said, said
