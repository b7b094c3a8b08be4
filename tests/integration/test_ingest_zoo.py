"""`medflow ingest` through its console script on real-world and broken DICOM.

Sources: pydicom's bundled test files (always there), the DICOM zoo of ../shared/data (when
present) and generated broken files (tests/helpers/broken_files.py). Every source file must
end up in exactly one place, the manifest or quarantine.csv, with a reason; no original
identifier may reach an output; the inputs are only read.
"""

from __future__ import annotations

import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from tests.helpers import broken_files
from tests.helpers.broken_files import DUPLICATE, QUARANTINED, SKIPPED, Expected
from tests.helpers.hashing import sha256_file, tree_hashes
from tests.helpers.identifiers import identifying_values
from tests.helpers.ingest_runs import (
    PYDICOM_FILES,
    PYDICOM_IMAGES,
    PYDICOM_NOT_IMAGES,
    Run,
    assert_accounted,
    assert_ingested_or_duplicate,
    assert_manifest_rows_sane,
    assert_no_identifiers,
    assert_succeeded,
    ingest,
    pydicom_selection,
    sop_uid,
    source_files,
    write_labels,
    write_params,
)
from tests.helpers.shared_data import SHARED_DATA, shared_data

# Zoo files that pydicom 3.0.2 + pylibjpeg (-libjpeg, -openjpeg, -rle) decode, all of image
# SOP classes: each must be ingested (or be a duplicate of an ingested instance).
ZOO_IMAGES = (
    "693_J2KR.dcm",
    "HTJ2K_08_RGB.dcm",
    "JLSL_08_07_0_1F.dcm",
    "JPEG-LL.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "OBXXXX1A.dcm",
    "SC_rgb.dcm",
    "SC_rgb_2frame.dcm",
    "SC_ybr_full_uncompressed.dcm",
    "US1_J2KI.dcm",
    "color-pl.dcm",
    "emri_small.dcm",
    "emri_small_RLE.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
)
# Segmentation Storage objects (liver_deflate and liver_rle do not even decode): not images to
# learn from, whatever their transfer syntax.
ZOO_SEGMENTATIONS = ("liver.dcm", "liver_deflate.dcm", "liver_j2k.dcm", "liver_rle.dcm")
SEGMENTATION = ("Segmentation Storage", "1.2.840.10008.5.1.4.1.1.66.4")
# Values that stand for "no identity" and may legitimately appear in an output.
NOTHING_CHANGED = re.compile(r"nothing (has )?changed|no changes|up[ -]to[ -]date", re.IGNORECASE)


# --- the zoo and pydicom's test files --------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, str]]:
    """One ingest of pydicom's small test files, plus the zoo when ../shared/data has it.

    Returns the run and the sha256 of every source file taken before it.
    """
    base = tmp_path_factory.mktemp("zoo")
    source = base / "source"
    zoo = SHARED_DATA / "dicom-zoo"
    zoo_files = sorted(zoo.glob("*.dcm")) if zoo.is_dir() else []
    for path in zoo_files:
        (source / "zoo").mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, source / "zoo" / path.name)
    picked = pydicom_selection({sop_uid(p) for p in zoo_files} - {""})
    assert len(picked) >= 30, f"only {len(picked)} small test files in {PYDICOM_FILES}"
    (source / "pydicom").mkdir(parents=True)
    for path in picked:
        shutil.copy2(path, source / "pydicom" / path.name)
    write_labels(source)
    before = tree_hashes(source)
    run = ingest(source, base / "out", write_params(base, source))
    return run, before


def test_every_file_is_ingested_or_quarantined_once(zoo_run: tuple[Run, dict[str, str]]) -> None:
    run, _ = zoo_run
    assert_succeeded(run)
    assert_accounted(run)
    assert_manifest_rows_sane(run)


def test_decodable_pydicom_images_are_ingested(zoo_run: tuple[Run, dict[str, str]]) -> None:
    run, _ = zoo_run
    assert_succeeded(run)
    assert_ingested_or_duplicate(run, [f"pydicom/{name}" for name in PYDICOM_IMAGES])


def test_non_image_objects_are_skipped_naming_their_sop_class(
    zoo_run: tuple[Run, dict[str, str]],
) -> None:
    run, _ = zoo_run
    assert_succeeded(run)
    for name, sop_class in PYDICOM_NOT_IMAGES.items():
        outcome = run.outcome_of(f"pydicom/{name}")
        assert outcome is not None and outcome[0] == SKIPPED, (name, outcome)
        assert sop_class in outcome[1], (name, outcome)


def test_no_original_identifier_in_any_output(zoo_run: tuple[Run, dict[str, str]]) -> None:
    run, _ = zoo_run
    assert_succeeded(run)
    assert_no_identifiers(run)


def test_inputs_are_only_read(zoo_run: tuple[Run, dict[str, str]]) -> None:
    run, before = zoo_run
    assert tree_hashes(run.source) == before


def test_zoo_expectations_hold_for_the_installed_decoders() -> None:
    """Guards the lists above: what pydicom + plugins decode here, and which objects are SEG."""
    zoo = shared_data("dicom-zoo")
    undecodable = []
    for name in ZOO_IMAGES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(zoo / name)
            try:
                ds.pixel_array  # noqa: B018 - decoding is the check
            except Exception as exc:
                undecodable.append(f"{name}: {type(exc).__name__}: {exc}")
        assert "Image Storage" in ds.SOPClassUID.name, (name, ds.SOPClassUID.name)
    assert not undecodable, undecodable
    for name in ZOO_SEGMENTATIONS:
        ds = pydicom.dcmread(zoo / name, stop_before_pixels=True)
        assert ds.SOPClassUID.name == SEGMENTATION[0], (name, ds.SOPClassUID.name)


def test_zoo_images_are_ingested(zoo_run: tuple[Run, dict[str, str]]) -> None:
    shared_data("dicom-zoo")
    run, _ = zoo_run
    assert_succeeded(run)
    assert_ingested_or_duplicate(run, [f"zoo/{name}" for name in ZOO_IMAGES])


def test_zoo_segmentations_are_skipped_naming_the_sop_class(
    zoo_run: tuple[Run, dict[str, str]],
) -> None:
    shared_data("dicom-zoo")
    run, _ = zoo_run
    assert_succeeded(run)
    for name in ZOO_SEGMENTATIONS:
        outcome = run.outcome_of(f"zoo/{name}")
        assert outcome is not None and outcome[0] == SKIPPED, (name, outcome)
        assert any(s in outcome[1] for s in SEGMENTATION), (name, outcome)


# --- generated broken files ------------------------------------------------------------------

N_VALID = 4


def broken_source(folder: Path) -> dict[str, Expected]:
    """Broken files under folder/broken (the loop is broken/sub/loop), valid ones under valid/."""
    expected = {
        f"broken/{rel}": e for rel, e in broken_files.write_broken_set(folder / "broken").items()
    }
    for i in range(N_VALID):
        path = folder / "valid" / f"v{i}.dcm"
        broken_files.write_valid(path, seed=i, patient_id=f"{broken_files.PATIENT_ID}-{i}")
        expected[f"valid/v{i}.dcm"] = broken_files.INGESTED
    write_labels(folder)
    return expected


@dataclass(frozen=True)
class BrokenSource:
    folder: Path
    expected: dict[str, Expected]
    hashes: dict[str, str]  # of every file, before any ingest


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> BrokenSource:
    """A source of broken files and a few valid ones (read-only: copy it to change it)."""
    source = tmp_path_factory.mktemp("broken") / "source"
    expected = broken_source(source)
    return BrokenSource(source, expected, tree_hashes(source))


@pytest.fixture(scope="module")
def broken_run(broken: BrokenSource) -> Run:
    base = broken.folder.parent
    params = write_params(base, broken.folder, max_quarantine_fraction=1.0)
    return ingest(broken.folder, base / "out", params)


def test_generated_files_are_what_they_claim(broken: BrokenSource) -> None:
    """The generator itself: valid files decode, broken ones are broken the way they say."""
    source, expected = broken.folder, broken.expected
    for rel, e in expected.items():
        path = source / rel
        if e.outcome is None:
            ds = pydicom.dcmread(path, force=True)
            if "TransferSyntaxUID" not in ds.file_meta:  # the raw data set: implicit VR LE
                assert path.read_bytes()[128:132] != b"DICM"
                ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
            assert ds.pixel_array.shape == (broken_files.SIZE, broken_files.SIZE), rel
    assert (source / "broken/empty.dcm").stat().st_size == 0
    assert (source / "broken/sub/loop").resolve() == (source / "broken").resolve()
    assert (source / "broken/picture.dcm").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PixelData" not in pydicom.dcmread(source / "broken/no_pixels.dcm")
    bomb = pydicom.dcmread(source / "broken/bomb.dcm")
    assert bomb.Rows == bomb.Columns == broken_files.HUGE and len(bomb.PixelData) < 16
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(source / "broken/raw/no_preamble.dcm")  # no preamble, no 'DICM'
    cut = pydicom.dcmread(source / "broken/truncated/in_pixel_data")
    assert len(cut.PixelData) < broken_files.SIZE**2 * 2


def test_broken_files_are_quarantined_with_their_reason(
    broken: BrokenSource, broken_run: Run
) -> None:
    expected = broken.expected
    assert_succeeded(broken_run)
    ingested = set(broken_run.manifest().content_hash)
    files = source_files(broken_run.source)
    problems = []
    for rel, e in sorted(expected.items()):
        outcome = broken_run.outcome_of(rel)
        if e.outcome is None:
            if files[rel] not in ingested or outcome is not None:
                problems.append(f"{rel}: should be ingested, got {outcome}")
        elif outcome is None:
            problems.append(f"{rel}: should be {e.outcome}, is not in quarantine.csv")
        elif outcome[0] != e.outcome or not e.matches(outcome[1]):
            problems.append(
                f"{rel}: expected {e.outcome} ({' | '.join(e.reason_any)}), got {outcome}"
            )
    assert not problems, "\n".join(problems)


def test_the_size_bomb_is_refused_before_allocating(broken_run: Run) -> None:
    assert_succeeded(broken_run)
    outcome = broken_run.outcome_of("broken/bomb.dcm")
    assert outcome is not None and outcome[0] == QUARANTINED, outcome
    assert str(broken_files.HUGE) in outcome[1] and "MemoryError" not in outcome[1], outcome


def test_broken_source_is_accounted_for_without_leaking_identifiers(
    broken: BrokenSource, broken_run: Run
) -> None:
    assert_succeeded(broken_run)
    assert tree_hashes(broken.folder) == broken.hashes, "the ingest changed its inputs"
    assert_accounted(broken_run, {"broken/sub/loop"})
    assert_manifest_rows_sane(broken_run)
    assert_no_identifiers(broken_run)
    planted = {broken_files.PATIENT_NAME.split("^")[0], broken_files.PATIENT_ID}
    assert planted <= set(identifying_values(broken_run.source))


def test_too_many_quarantined_files_fail_the_stage_and_write_nothing(
    broken: BrokenSource, tmp_path: Path
) -> None:
    source = broken.folder
    params = write_params(tmp_path, source, max_quarantine_fraction=0.1)
    parent = tmp_path / "run"
    parent.mkdir()
    run = ingest(source, parent / "out", params)
    assert run.proc.returncode == 1, run.said
    assert "max_quarantine_fraction" in run.proc.stderr, run.said
    assert not run.out.exists(), "a failed ingest must not leave an output folder"
    assert not list(parent.iterdir()), f"leftovers beside OUT: {list(parent.iterdir())}"
    assert tree_hashes(source) == broken.hashes, "the ingest changed its inputs"


# --- re-runs, duplicates, frames -------------------------------------------------------------


def test_a_rerun_without_changes_is_a_no_op_and_a_new_file_adds_one_row(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for i in range(4):
        broken_files.write_valid(
            source / f"p{i}" / "image.dcm", seed=100 + i, patient_id=f"RERUN-{i:04d}"
        )
    write_labels(source)
    params, out = write_params(tmp_path, source), tmp_path / "out"

    first = ingest(source, out, params)
    assert_succeeded(first)
    manifest_bytes = (out / "manifest.csv").read_bytes()
    mtime = (out / "manifest.csv").stat().st_mtime_ns
    first_log = (out / "ingest.log").read_text()
    old_rows = first.manifest()
    assert len(old_rows) == 4

    second = ingest(source, out, params)
    assert_succeeded(second)
    assert (out / "manifest.csv").read_bytes() == manifest_bytes
    assert (out / "manifest.csv").stat().st_mtime_ns == mtime, "manifest.csv was rewritten"
    # What the second run said: its console output, and its log if it wrote a new one.
    second_log = (out / "ingest.log").read_text()
    told = (
        f"{second.proc.stdout} {second.proc.stderr} {'' if second_log == first_log else second_log}"
    )
    told = " ".join(told.split())  # rich wraps long lines
    assert NOTHING_CHANGED.search(told), f"the re-run should say nothing changed\n{second.said}"

    added = broken_files.write_valid(source / "p9" / "image.dcm", seed=109, patient_id="RERUN-0009")
    with (source / "labels.csv").open("a") as fh:
        fh.write("p9/image.dcm,lesion\n")
    third = ingest(source, out, params)
    assert_succeeded(third)
    assert_accounted(third)
    new_rows = third.manifest()
    assert len(new_rows) == len(old_rows) + 1
    key = "image_id"
    unchanged = new_rows[new_rows[key].isin(old_rows[key])].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        unchanged[list(old_rows.columns)], old_rows.sort_values(key).reset_index(drop=True)
    )
    extra = new_rows[~new_rows[key].isin(old_rows[key])]
    assert extra.content_hash.tolist() == [sha256_file(added)]
    assert extra.label_name.tolist() == ["lesion"]


def test_the_same_bytes_under_two_names_are_ingested_once(tmp_path: Path) -> None:
    source = tmp_path / "source"
    original = broken_files.write_valid(
        source / "a" / "image.dcm", seed=200, patient_id="DUPL-0001"
    )
    (source / "b").mkdir()
    shutil.copy2(original, source / "b" / "copy_of_image.dcm")
    broken_files.write_valid(source / "c" / "other.dcm", seed=201, patient_id="DUPL-0002")
    # Both copies get the same label, as an export listing each file would give them.
    (source / "labels.csv").write_text(
        "path,label\na/image.dcm,normal\nb/copy_of_image.dcm,normal\nc/other.dcm,lesion\n"
    )

    run = ingest(source, tmp_path / "out", write_params(tmp_path, source))
    assert_succeeded(run)
    assert_accounted(run)
    manifest = run.manifest()
    assert (manifest.content_hash == sha256_file(original)).sum() == 1
    outcomes = [run.outcome_of("a/image.dcm"), run.outcome_of("b/copy_of_image.dcm")]
    assert outcomes.count(None) == 1, outcomes
    duplicate = next(o for o in outcomes if o is not None)
    assert duplicate[0] == DUPLICATE, duplicate


@pytest.mark.parametrize(("frames", "expected"), [("all", [0, 1]), ("first", [0])])
def test_multi_frame_files_give_a_row_per_frame_taken(
    frames: str, expected: list[int], tmp_path: Path
) -> None:
    two_frames = shared_data("dicom-zoo") / "SC_rgb_2frame.dcm"
    source = tmp_path / "source"
    (source / "sc").mkdir(parents=True)
    shutil.copy2(two_frames, source / "sc" / two_frames.name)
    for i in range(2):
        broken_files.write_valid(
            source / "ct" / f"{i}.dcm", seed=300 + i, patient_id=f"FRAME-{i:04d}"
        )
    write_labels(source)

    run = ingest(source, tmp_path / "out", write_params(tmp_path, source, frames=frames))
    assert_succeeded(run)
    assert_accounted(run)
    manifest = run.manifest()
    rows = manifest[manifest.content_hash == sha256_file(two_frames)]
    assert sorted(rows.frame.astype(int)) == expected, rows
    assert set(rows.frames.astype(int)) == {2} and rows.image_id.is_unique
    assert len(manifest) == len(expected) + 2  # the single-frame files: one row each
