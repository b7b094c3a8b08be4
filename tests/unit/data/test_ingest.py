from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pydicom.config
import pydicom.examples
import pytest

from medflow.config import DataParams, DeidParams, IngestParams, PreprocessParams
from medflow.data.ingest import MISSING, IngestConfig, run_ingest
from medflow.data.manifest import COLUMNS, IDENTIFYING_COLUMNS, age_band, read_manifest
from medflow.data.shard import NO_LABEL
from medflow.errors import IngestFailed
from tests.helpers.deid_key import KEY
from tests.helpers.hashing import sha256_file, tree_hashes
from tests.helpers.identifiers import identifying_values
from tests.helpers.npz_archives import SIZES, make_npz
from tests.helpers.synthetic import CLASSES, SMALL


def config(data: DataParams, **ingest: object) -> IngestConfig:
    """In-process, and every loss tolerated: these tests look at what was lost and why."""
    settings = {"workers": 1, "max_quarantine_fraction": 1.0, **ingest}
    return IngestConfig(data, IngestParams(**settings), DeidParams(), PreprocessParams())


PARAMS = config(DataParams(source="source", class_names=CLASSES))


def _append_labels(source: Path, rows: list[tuple[str, str]]) -> None:
    with (source / "labels.csv").open("a") as fh:
        fh.writelines(f"{path},{label}\n" for path, label in rows)


@pytest.fixture
def messy_source(synth_dir: Path, tmp_path: Path) -> Path:
    """The small synthetic set plus what real exports contain: junk, non-images, strays."""
    source = tmp_path / "source"
    shutil.copytree(synth_dir, source)
    (source / "P0001" / "x.dcm").write_text("this is not DICOM\n")
    shutil.copy(pydicom.examples.get_path("rt_plan"), source / "P0002" / "plan.dcm")
    shutil.copy(source / "P0003" / "IM0001.dcm", source / "P0003" / "unlisted.dcm")
    _append_labels(
        source,
        [("P0001/x.dcm", "normal"), ("P0002/plan.dcm", "1"), ("P0009/gone.dcm", "lesion")],
    )
    return source


@pytest.fixture
def ingested(messy_source: Path, tmp_path: Path) -> tuple[Path, Path, object]:
    out = tmp_path / "ingested"
    return messy_source, out, run_ingest(PARAMS, messy_source, out, KEY)


def test_manifest_has_exactly_the_columns(ingested: tuple) -> None:
    _, out, result = ingested
    manifest = read_manifest(out)
    assert list(manifest.columns) == list(COLUMNS)
    assert not set(IDENTIFYING_COLUMNS) & set(manifest.columns)
    n = SMALL.n_patients * SMALL.images_per_patient
    assert len(manifest) == result.n_images == n
    assert result.n_patients == manifest.patient_id.nunique() == SMALL.n_patients
    assert result.manifest == out / "manifest.csv"
    assert manifest.image_id.is_unique and manifest.patient_id.str.startswith("PSN-").all()
    assert set(manifest.photometric) == {"MONOCHROME1", "MONOCHROME2"}
    assert (manifest.pixel_max >= manifest.pixel_mean).all() and manifest.pixel_std.gt(0).all()
    assert manifest.pixel_spacing.notna().all()
    assert (manifest.label_name == manifest.label.map(dict(enumerate(CLASSES)))).all()
    for row in manifest.itertuples():
        ds = pydicom.dcmread(out / row.file)
        assert row.file == f"images/{row.content_hash}.dcm"
        assert ds.SOPInstanceUID == row.sop_instance_id == row.image_id and row.frame == 0
        assert ds.PatientID == row.patient_id and ds.PatientIdentityRemoved == "YES"
        # Retain Patient Characteristics (the default): sex and age band for subgroups
        assert row.sex == ds.PatientSex and row.sex in ("F", "M")
        assert row.age_band == age_band(ds.PatientAge) and row.age_band


def test_labels_and_content_hashes_match_the_source(ingested: tuple) -> None:
    source, out, _ = ingested
    manifest = read_manifest(out)
    labels = pd.read_csv(source / "labels.csv")
    by_hash = {
        sha256_file(source / p): label
        for p, label in zip(labels.path, labels.label, strict=True)
        if (source / p).is_file()
    }
    for row in manifest.itertuples():
        assert by_hash[row.content_hash] == row.label_name


def test_bad_files_are_quarantined_with_reasons_and_the_run_goes_on(ingested: tuple) -> None:
    _, out, result = ingested
    quarantine = pd.read_csv(out / "quarantine.csv").set_index("path")
    assert len(quarantine) == 4 and result.n_quarantined == 3
    assert result.outcomes == {"quarantined": 3, "skipped": 1}
    assert "not a DICOM file" in quarantine.loc["P0001/x.dcm", "reason"]
    assert quarantine.loc["P0002/plan.dcm", "outcome"] == "skipped"
    assert (
        "not an image to learn from: RT Plan Storage" in quarantine.loc["P0002/plan.dcm", "reason"]
    )
    assert quarantine.loc["P0003/unlisted.dcm", "reason"] == NO_LABEL
    assert quarantine.loc["P0009/gone.dcm", "reason"] == MISSING
    assert len(quarantine.loc["P0001/x.dcm", "sha256"]) == 64


def test_no_identifying_value_anywhere_in_the_output(ingested: tuple) -> None:
    source, out, _ = ingested
    values = identifying_values(source)
    assert len(values) > 5 * SMALL.n_patients  # names, IDs, dates, UIDs of every patient
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaked = [v for v in values if v.encode() in data]
            assert not leaked, f"{len(leaked)} original value(s) in {path.relative_to(out)}"
    audit = json.loads((out / "phi_audit.json").read_text())
    n_files = sum(1 for p in out.rglob("*") if p.is_file())
    assert audit["findings"] == 0 and audit["files_scanned"] == n_files - 1  # all but itself


def test_splits_are_patient_level_and_counted(ingested: tuple) -> None:
    _, out, result = ingested
    manifest = read_manifest(out)
    assert (manifest.groupby("patient_id").split.nunique() == 1).all()
    assert set(manifest.split) == {"train", "val", "test"}
    counted = Counter(zip(manifest.split, manifest.label_name, strict=True))
    assert {(s, c): n for s, by in result.counts.items() for c, n in by.items() if n} == counted


def test_inputs_are_never_modified(messy_source: Path, tmp_path: Path) -> None:
    before = tree_hashes(messy_source)
    run_ingest(PARAMS, messy_source, tmp_path / "out", KEY)
    assert tree_hashes(messy_source) == before


def test_same_key_same_output_and_hash(synth_dir: Path, tmp_path: Path) -> None:
    first = run_ingest(PARAMS, synth_dir, tmp_path / "a", KEY)
    second = run_ingest(PARAMS, synth_dir, tmp_path / "b", KEY)
    assert first.data_hash == second.data_hash
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (
        tmp_path / "b" / "manifest.csv"
    ).read_bytes()
    other = run_ingest(PARAMS, synth_dir, tmp_path / "c", b"a-different-key-0123456789")
    assert other.data_hash == first.data_hash  # the data did not change, only pseudonyms
    assert set(read_manifest(tmp_path / "c").patient_id).isdisjoint(
        read_manifest(tmp_path / "a").patient_id
    )


def test_identifier_left_after_deidentification_quarantines_that_file_only(
    synth_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    shutil.copytree(synth_dir, source)
    target = source / "P0001" / "IM0001.dcm"
    ds = pydicom.dcmread(target)
    family = str(ds.PatientName).split("^")[0]
    # Free text the profile removes, and an attribute it keeps (not in Table E.1-1).
    ds.ImageComments = f"follow-up for {family}, see prior"
    ds.ManufacturerModelName = f"scanner of {family}"
    ds.save_as(target, enforce_file_format=True)
    out = tmp_path / "out"
    result = run_ingest(PARAMS, source, out, KEY)

    quarantine = pd.read_csv(out / "quarantine.csv").set_index("path")
    row = quarantine.loc["P0001/IM0001.dcm"]
    assert (row.outcome, row.category) == ("quarantined", "PHI audit")
    assert "PatientName component" in row.reason and "ManufacturerModelName" in row.reason
    assert "ImageComments" not in row.reason  # removed by the profile: no finding there
    sha = sha256_file(target)
    assert not (out / "images" / f"{sha}.dcm").exists()
    assert sha not in set(read_manifest(out).content_hash)
    assert result.n_images == 2 * SMALL.n_patients - 1
    audit = json.loads((out / "phi_audit.json").read_text())
    assert audit["images_quarantined_by_audit"] == 1 and audit["findings"] == 0
    for path in [p for p in out.rglob("*") if p.is_file()]:
        assert family.upper().encode() not in path.read_bytes().upper()


def test_audit_quarantines_beyond_the_threshold_fail_the_run(
    synth_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    shutil.copytree(synth_dir, source)
    for target in sorted(source.glob("P000[1-3]/*.dcm")):
        ds = pydicom.dcmread(target)
        ds.ManufacturerModelName = str(ds.PatientID)  # kept by the profile: an audit finding
        ds.save_as(target, enforce_file_format=True)
    out = tmp_path / "out"
    with pytest.raises(IngestFailed, match="PHI audit") as info:
        run_ingest(config(PARAMS.data, max_quarantine_fraction=0.05), source, out, KEY)
    assert "nothing was written" in str(info.value) and not out.exists()


def test_patient_named_folders_are_withheld_in_quarantine(synth_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(synth_dir, source)
    family = str(pydicom.dcmread(source / "P0002" / "IM0001.dcm").PatientName).split("^")[0]
    (source / family).mkdir()
    (source / family / "notes.txt").write_text("scanned request form")
    run_ingest(PARAMS, source, tmp_path / "out", KEY)
    text = (tmp_path / "out" / "quarantine.csv").read_text()
    assert family.upper() not in text.upper() and "withheld" in text


def test_missing_labels_csv_is_an_error(synth_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(synth_dir, source)
    (source / "labels.csv").unlink()
    with pytest.raises(IngestFailed, match="labels.csv"):
        run_ingest(PARAMS, source, tmp_path / "out", KEY)
    assert not (tmp_path / "out").exists()


def test_unknown_classes_are_named(synth_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(synth_dir, source)
    _append_labels(source, [("P0001/IM0001.dcm", "tumour"), ("P0001/IM0002.dcm", "5")])
    with pytest.raises(IngestFailed, match=r"\['5', 'tumour'\].*normal"):
        run_ingest(PARAMS, source, tmp_path / "out", KEY)


def test_nothing_ingestible_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.dcm").write_text("junk")
    (source / "labels.csv").write_text("path,label\na.dcm,normal\n")
    with pytest.raises(IngestFailed, match="no image could be ingested"):
        run_ingest(PARAMS, source, tmp_path / "out", KEY)
    assert not (tmp_path / "out").exists()


def test_pydicom_examples_are_ingested(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    names = ["ct", "mr", "rgb_color", "palette_color", "jpeg2k"]
    for name in names:
        shutil.copy(pydicom.examples.get_path(name), source / f"{name}.dcm")
    (source / "labels.csv").write_text(
        "path,label\n" + "".join(f"{n}.dcm,{i % 2}\n" for i, n in enumerate(names))
    )
    result = run_ingest(PARAMS, source, tmp_path / "out", KEY)
    assert result.n_images == len(names) and result.n_quarantined == 0
    manifest = read_manifest(tmp_path / "out")
    assert set(manifest.modality) >= {"CT", "MR", "US"}
    values = identifying_values(source)
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert not [v for v in values if v.encode() in path.read_bytes()]


def test_npz_keeps_official_splits(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "tiny.npz")
    params = config(DataParams(source="tiny.npz", class_names=["normal", "pneumonia"]))
    result = run_ingest(params, npz, tmp_path / "out", KEY)
    manifest = read_manifest(tmp_path / "out")
    assert Counter(manifest.split) == SIZES
    assert result.n_images == sum(SIZES.values()) and result.n_quarantined == 0
    archive = np.load(npz)
    for split, n in SIZES.items():
        expected = Counter(archive[f"{split}_labels"][:, 0].tolist())
        assert Counter(manifest[manifest.split == split].label.tolist()) == expected
        assert sum(result.counts[split].values()) == n
    assert (manifest.modality == "OT").all()


def test_unusable_npz_is_an_ingest_error(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "bad.npz", test_labels=np.array([[0], [3], [1], [0]]))
    params = config(DataParams(source="bad.npz", class_names=["normal", "pneumonia"]))
    with pytest.raises(IngestFailed, match="test_labels holds"):
        run_ingest(params, npz, tmp_path / "out", KEY)


def test_invalid_original_values_are_not_quoted_in_logs(
    synth_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "source"
    shutil.copytree(synth_dir, source)
    target = source / "P0001" / "IM0001.dcm"
    ds = pydicom.dcmread(target)
    odd_uid = "1.2.0999.03.77"  # a leading zero: pydicom warns, quoting the value
    with pytest.warns(UserWarning):
        ds.StudyInstanceUID = odd_uid
    ds.save_as(target, enforce_file_format=True)
    caplog.clear()  # only what ingest logs counts
    with caplog.at_level(logging.DEBUG):
        run_ingest(PARAMS, source, tmp_path / "out", KEY)
    assert odd_uid not in caplog.text
    assert pydicom.config.settings.reading_validation_mode == pydicom.config.WARN  # restored
