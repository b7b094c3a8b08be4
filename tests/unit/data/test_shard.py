"""One shard of ingest work, run in this process on real files."""

from __future__ import annotations

import pickle
import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom import examples
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

from medflow.data.deid import Deidentifier
from medflow.data.shard import (
    DUPLICATE,
    NO_LABEL,
    PHI_AUDIT,
    QUARANTINED,
    SKIPPED,
    ShardSettings,
    ShardTask,
    ingest_shard,
)
from tests.helpers.deid_key import KEY
from tests.helpers.dicom_files import image_dataset, write_dicom
from tests.helpers.hashing import sha256_file

CLASSES = ("normal", "lesion")


def settings(**overrides: object) -> ShardSettings:
    values = {
        "class_names": CLASSES,
        "frames": "first",
        "max_frame_pixels": 64 * 1024 * 1024,
        "allow_burned_in_annotation": False,
        **overrides,
    }
    return ShardSettings(**values)


def run(source: Path, out: Path, files: list[tuple[str, int | None]], **overrides: object):
    task = ShardTask(str(source), str(out), tuple(files), KEY, settings(**overrides))
    return ingest_shard(task)


def _frames(n: int) -> np.ndarray:
    """n 8 x 8 frames with clearly different means (100, 1100, 2100, ...)."""
    base = np.arange(64, dtype=np.uint16).reshape(8, 8) + 68
    return np.stack([base + 1000 * k for k in range(n)]).astype(np.uint16)


# ------------------------------------------------------------------------ burned-in text


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # "yes " is off-standard
@pytest.mark.parametrize("value", ["YES", "yes "])
def test_burned_in_annotation_is_quarantined_by_default(tmp_path: Path, value: str) -> None:
    source = tmp_path / "source"
    path = write_dicom(image_dataset(_frames(1)[0], BurnedInAnnotation=value), source / "a.dcm")
    result = run(source, tmp_path / "out", [("a.dcm", 0)])
    assert result.rows == [] and len(result.outcomes) == 1
    outcome = result.outcomes[0]
    assert (outcome.path, outcome.sha256, outcome.outcome) == (
        "a.dcm",
        sha256_file(path),
        QUARANTINED,
    )
    assert outcome.category == "burned-in annotation"
    assert "deid.allow_burned_in_annotation" in outcome.reason
    assert list((tmp_path / "out" / "images").iterdir()) == []  # nothing written


def test_burned_in_annotation_is_ingested_when_allowed(tmp_path: Path) -> None:
    source = tmp_path / "source"
    path = write_dicom(image_dataset(_frames(1)[0], BurnedInAnnotation="YES"), source / "a.dcm")
    result = run(source, tmp_path / "out", [("a.dcm", 1)], allow_burned_in_annotation=True)
    assert result.outcomes == [] and len(result.rows) == 1
    assert result.rows[0]["label_name"] == "lesion"
    assert (tmp_path / "out" / "images" / f"{sha256_file(path)}.dcm").is_file()


@pytest.mark.parametrize("value", ["NO", None])
def test_no_burned_in_annotation_is_ingested(tmp_path: Path, value: str | None) -> None:
    source = tmp_path / "source"
    attrs = {} if value is None else {"BurnedInAnnotation": value}
    write_dicom(image_dataset(_frames(1)[0], **attrs), source / "a.dcm")
    result = run(source, tmp_path / "out", [("a.dcm", 0)])
    assert result.outcomes == [] and len(result.rows) == 1


# --------------------------------------------------------------------------------- frames


def test_frames_all_gives_one_row_per_frame(tmp_path: Path) -> None:
    source = tmp_path / "source"
    frames = _frames(3)
    original = image_dataset(frames)
    path = write_dicom(original, source / "multi.dcm")
    result = run(source, tmp_path / "out", [("multi.dcm", 1)], frames="all")
    assert result.outcomes == []
    written = pydicom.dcmread(tmp_path / "out" / "images" / f"{sha256_file(path)}.dcm")
    sop = str(written.SOPInstanceUID)
    assert sop != str(original.SOPInstanceUID)  # de-identified
    assert [r["image_id"] for r in result.rows] == [f"{sop}:0", f"{sop}:1", f"{sop}:2"]
    assert [r["frame"] for r in result.rows] == [0, 1, 2]
    assert {r["file"] for r in result.rows} == {f"images/{sha256_file(path)}.dcm"}
    assert {r["sop_instance_id"] for r in result.rows} == {sop}
    assert all(r["frames"] == 3 and r["label"] == 1 for r in result.rows)
    for row, frame in zip(result.rows, frames, strict=True):  # statistics of their own frame
        assert row["pixel_mean"] == pytest.approx(frame.mean())
        assert row["pixel_min"] == frame.min() and row["pixel_max"] == frame.max()
        at_extremes = max((frame == frame.min()).sum(), (frame == frame.max()).sum())
        assert row["pixel_constant_fraction"] == pytest.approx(at_extremes / frame.size)


@pytest.mark.parametrize(("policy", "frame"), [("first", 0), ("middle", 1)])
def test_one_frame_policies_give_one_row_without_suffix(
    tmp_path: Path, policy: str, frame: int
) -> None:
    source = tmp_path / "source"
    frames = _frames(3)
    write_dicom(image_dataset(frames), source / "multi.dcm")
    result = run(source, tmp_path / "out", [("multi.dcm", 0)], frames=policy)
    [row] = result.rows
    assert row["image_id"] == row["sop_instance_id"] and ":" not in str(row["image_id"])
    assert row["frame"] == frame
    assert row["pixel_mean"] == pytest.approx(frames[frame].mean())


def test_frames_all_on_a_single_frame_file_keeps_the_plain_id(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_dicom(image_dataset(_frames(1)[0]), source / "one.dcm")
    [row] = run(source, tmp_path / "out", [("one.dcm", 0)], frames="all").rows
    assert row["image_id"] == row["sop_instance_id"] and row["frame"] == 0


# ------------------------------------------------------------------------- what else happens


def test_bad_files_become_outcomes_and_the_shard_goes_on(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "junk.dcm").write_text("not DICOM")
    shutil.copy(examples.get_path("rt_plan"), source / "plan.dcm")
    shutil.copy(examples.get_path("ct"), source / "ct.dcm")
    shutil.copy(examples.get_path("mr"), source / "unlabelled.dcm")
    files = [
        ("junk.dcm", 0),
        ("plan.dcm", 0),
        ("gone.dcm", 1),  # listed, never there
        ("unlabelled.dcm", None),
        ("ct.dcm", 1),
    ]
    result = run(source, tmp_path / "out", files)
    by_path = {o.path: o for o in result.outcomes}
    assert by_path["junk.dcm"].outcome == QUARANTINED
    assert by_path["junk.dcm"].category == "not a DICOM file"
    assert by_path["plan.dcm"].outcome == SKIPPED and by_path["plan.dcm"].category == "not an image"
    assert by_path["gone.dcm"].category == "unexpected FileNotFoundError"
    assert by_path["gone.dcm"].sha256 == ""
    assert by_path["unlabelled.dcm"].reason == NO_LABEL
    assert DUPLICATE not in {o.outcome for o in result.outcomes}  # decided by the caller
    assert [r["modality"] for r in result.rows] == ["CT"]
    assert set(result.hashes) == {"junk.dcm", "plan.dcm", "unlabelled.dcm", "ct.dcm"}
    assert result.hashes["ct.dcm"] == sha256_file(source / "ct.dcm")
    assert result.files_scanned == 1
    # the unlabelled file's identifiers were remembered: they may still appear in paths
    mr_id = str(pydicom.dcmread(source / "unlabelled.dcm").PatientID)
    assert "PatientID" in result.audit.kinds_in_text(f"folder {mr_id}")


def test_big_endian_source_is_written_little_endian_with_the_same_pixels(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(get_testdata_file("MR_small_bigendian.dcm"), source / "be.dcm")
    result = run(source, tmp_path / "out", [("be.dcm", 0)])
    assert result.outcomes == []
    written = pydicom.dcmread(tmp_path / "out" / result.rows[0]["file"])
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    expected = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    np.testing.assert_array_equal(written.pixel_array, expected)


def test_written_image_is_de_identified_and_rows_point_at_it(tmp_path: Path) -> None:
    source = tmp_path / "source"
    original = image_dataset(_frames(1)[0], InstitutionName="Brackwater Clinic")
    path = write_dicom(original, source / "P" / "a.dcm")
    [row] = run(source, tmp_path / "out", [("P/a.dcm", 0)]).rows
    written = pydicom.dcmread(tmp_path / "out" / str(row["file"]))
    assert written.PatientID == row["patient_id"] and str(row["patient_id"]).startswith("PSN-")
    assert row["site"] == written.InstitutionName and str(row["site"]).startswith("SITE-")
    assert row["content_hash"] == sha256_file(path)
    data = (tmp_path / "out" / str(row["file"])).read_bytes()
    for value in ("MRN55501234", "Quorvex", "Brackwater", str(original.StudyInstanceUID)):
        assert value.encode() not in data


def test_task_and_result_cross_process_boundaries(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_dicom(image_dataset(_frames(1)[0]), source / "a.dcm")
    task = ShardTask(str(source), str(tmp_path / "out"), (("a.dcm", 0),), KEY, settings())
    result = ingest_shard(pickle.loads(pickle.dumps(task)))
    copy = pickle.loads(pickle.dumps(result))
    pd.testing.assert_frame_equal(pd.DataFrame(copy.rows), pd.DataFrame(result.rows))
    assert copy.hashes == result.hashes and len(copy.rows) == 1
    assert copy.audit.kinds_in_text("MRN55501234") == {"PatientID"}


def test_a_blank_frame_has_constant_fraction_one() -> None:
    from medflow.data.shard import _stats

    assert _stats(np.full((8, 8), 7.0))["pixel_constant_fraction"] == 1.0
    ramp = np.arange(64.0).reshape(8, 8)
    assert _stats(ramp)["pixel_constant_fraction"] == 1 / 64


def _numpy_stats(grey: np.ndarray) -> dict[str, float]:
    low, high = grey.min(), grey.max()
    return {
        "pixel_mean": float(grey.mean()),
        "pixel_std": float(grey.std()),
        "pixel_min": float(low),
        "pixel_max": float(high),
        "pixel_constant_fraction": float(
            max(np.count_nonzero(grey == low), np.count_nonzero(grey == high)) / grey.size
        ),
    }


def test_stats_in_reused_arrays_are_numpys_bit_for_bit() -> None:
    from medflow.data.shard import _Scratch, _stats

    rng = np.random.default_rng(7)
    scratch = _Scratch()
    for shape in [(64, 64), (3, 517), (64, 64), (1, 1)]:  # reused, then a new shape
        for scale in (1e-6, 1.0, 4095.0, 1e9):
            grey = rng.standard_normal(shape) * scale + 3.3 * scale
            assert _stats(grey, scratch) == _numpy_stats(grey)
            rounded = np.round(grey)
            assert _stats(rounded, scratch) == _numpy_stats(rounded)


def test_a_frame_decoded_into_a_reused_array_is_the_same() -> None:
    from medflow.data.shard import _Scratch
    from medflow.imaging.pixels import decode_frame

    scratch = _Scratch()
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.RescaleSlope, ds.RescaleIntercept = 0.37, -1024.5
        new = decode_frame(ds, 0, 10**8)
        reused = decode_frame(ds, 0, 10**8, out=scratch.frame(ds))
        assert reused is scratch.frame(ds)
        assert reused.dtype == new.dtype and np.array_equal(reused, new)


# ------------------------------------------------------------------------------ PHI audit


def test_coded_values_and_removed_descriptions_are_no_audit_hits(tmp_path: Path) -> None:
    """A patient named like the study's coded values and description is still ingested."""
    source = tmp_path / "source"
    ds = image_dataset(
        _frames(1)[0],
        PatientName="Chest^Perfusion",
        ImageType=["ORIGINAL", "PRIMARY", "PERFUSION"],  # CS: a code, not a name
        BodyPartExamined="CHEST",
        StudyDescription="CHEST PERFUSION",  # free text: removed by the profile
    )
    region = pydicom.Dataset()
    region.CodeValue, region.CodingSchemeDesignator = "PERFUSION", "CHEST"  # codes too
    region.CodeMeaning = "Thorax"
    ds.AnatomicRegionSequence = [region]
    write_dicom(ds, source / "a.dcm")
    result = run(source, tmp_path / "out", [("a.dcm", 0)])
    assert result.outcomes == [] and len(result.rows) == 1
    written = pydicom.dcmread(tmp_path / "out" / result.rows[0]["file"])
    assert list(written.ImageType) == ["ORIGINAL", "PRIMARY", "PERFUSION"]
    assert "StudyDescription" not in written


def test_values_written_by_the_deidentification_are_no_audit_hits(tmp_path: Path) -> None:
    """A shifted study date that happens to equal the original birth date is not a leak."""
    source = tmp_path / "source"
    days = Deidentifier(KEY).shift_days("MRN55501234")
    birth = (date(2021, 3, 4) - timedelta(days=days)).strftime("%Y%m%d")
    write_dicom(image_dataset(_frames(1)[0], PatientBirthDate=birth), source / "a.dcm")
    result = run(source, tmp_path / "out", [("a.dcm", 0)])
    assert result.outcomes == [] and len(result.rows) == 1
    written = pydicom.dcmread(tmp_path / "out" / result.rows[0]["file"])
    assert written.StudyDate == birth and written.PatientBirthDate == ""


def test_an_identifier_the_profile_leaves_quarantines_the_file(tmp_path: Path) -> None:
    source = tmp_path / "source"
    ds = image_dataset(_frames(1)[0], ManufacturerModelName="Quorvex special")
    path = write_dicom(ds, source / "a.dcm")
    write_dicom(image_dataset(_frames(1)[0]), source / "b.dcm")
    result = run(source, tmp_path / "out", [("a.dcm", 0), ("b.dcm", 1)])
    assert [r["label"] for r in result.rows] == [1]  # the run goes on with b.dcm
    [outcome] = result.outcomes
    assert (outcome.path, outcome.outcome, outcome.category) == ("a.dcm", QUARANTINED, PHI_AUDIT)
    assert outcome.reason == (
        "PHI audit: original PatientName component still present after de-identification"
        " (in ManufacturerModelName); the image was not written"
    )
    assert not (tmp_path / "out" / "images" / f"{sha256_file(path)}.dcm").exists()
