"""Re-ingesting into the same folder does only the new work; workers do not change the output."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from medflow.config import DataParams, DeidParams, IngestParams, PreprocessParams, SplitParams
from medflow.data.incremental import STATE_FILE, output_hashes
from medflow.data.ingest import IngestConfig, run_ingest
from medflow.data.manifest import read_manifest
from medflow.data.shard import ShardResult, ShardTask
from medflow.data.splits import assign_splits
from medflow.data.workers import ShardFn, serial_mapper
from medflow.errors import IngestFailed
from tests.helpers.deid_key import KEY
from tests.helpers.hashing import sha256_file
from tests.helpers.synthetic import CLASSES, SMALL

N_FILES = SMALL.n_patients * SMALL.images_per_patient


def config(classes: list[str] = CLASSES, frames: str = "first", **ingest: object) -> IngestConfig:
    settings = {"workers": 1, "max_quarantine_fraction": 1.0, **ingest}
    return IngestConfig(
        DataParams(class_names=classes),
        IngestParams(**settings),
        DeidParams(),
        PreprocessParams(frames=frames),
    )


class Recorder:
    """A mapper that runs the shards here, in order, and remembers which files it was given."""

    def __init__(self) -> None:
        self.files: list[str] = []

    def __call__(self, fn: ShardFn, tasks: Sequence[ShardTask]) -> Iterator[ShardResult]:
        self.files += [rel for task in tasks for rel, _ in task.files]
        yield from serial_mapper(fn, tasks)


def reversed_mapper(fn: ShardFn, tasks: Sequence[ShardTask]) -> Iterator[ShardResult]:
    """Shards finishing in the opposite order, as a pool or a cluster may deliver them."""
    yield from reversed([fn(task) for task in tasks])


def _snapshot(folder: Path) -> dict[str, tuple[str, int, int]]:
    return {
        p.relative_to(folder).as_posix(): (sha256_file(p), p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _labels(source: Path) -> pd.DataFrame:
    return pd.read_csv(source / "labels.csv", dtype=str)


def _append_labels(source: Path, rows: list[tuple[str, str]]) -> None:
    with (source / "labels.csv").open("a") as fh:
        fh.writelines(f"{path},{label}\n" for path, label in rows)


@pytest.fixture
def source(synth_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "source"
    shutil.copytree(synth_dir, copy)
    return copy


@pytest.fixture
def first(source: Path, tmp_path: Path) -> tuple[Path, Path]:
    """source, and out after a first full ingest of it."""
    out = tmp_path / "out"
    result = run_ingest(config(), source, out, KEY)
    assert result.n_reused == 0 and not result.unchanged and result.n_files == N_FILES
    return source, out


# ----------------------------------------------------------------------------- re-ingest


def test_rerun_with_nothing_changed_touches_nothing(first: tuple[Path, Path]) -> None:
    source, out = first
    before = _snapshot(out)
    manifest = read_manifest(out)
    recorder = Recorder()
    result = run_ingest(config(), source, out, KEY, mapper=recorder)
    assert result.unchanged and recorder.files == []
    assert _snapshot(out) == before  # same bytes, same times, same inodes
    assert result.n_images == len(manifest) and result.n_files == N_FILES
    assert result.n_patients == SMALL.n_patients


def test_changed_label_reuses_the_image_and_updates_the_label(first: tuple[Path, Path]) -> None:
    source, out = first
    labels = _labels(source)
    target = labels.path[0]
    old = labels.label[0]
    new = CLASSES[1 - CLASSES.index(old)]
    labels.loc[0, "label"] = new
    labels.to_csv(source / "labels.csv", index=False)
    sha = sha256_file(source / target)
    image_before = sha256_file(out / "images" / f"{sha}.dcm")

    recorder = Recorder()
    result = run_ingest(config(), source, out, KEY, mapper=recorder)
    assert not result.unchanged
    assert recorder.files == [] and result.n_reused == N_FILES  # nothing decoded again
    manifest = read_manifest(out).set_index("content_hash")
    assert manifest.loc[sha, "label_name"] == new
    assert manifest.loc[sha, "label"] == CLASSES.index(new)
    assert sha256_file(out / "images" / f"{sha}.dcm") == image_before
    others = labels.assign(sha=[sha256_file(source / p) for p in labels.path]).iloc[1:]
    assert (manifest.loc[others.sha, "label_name"].to_numpy() == others.label.to_numpy()).all()


def test_added_file_is_the_only_one_processed(first: tuple[Path, Path]) -> None:
    source, out = first
    ds = pydicom.dcmread(source / "P0001" / "IM0001.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.PatientID = "MRN-NEW-0099"
    (source / "P0099").mkdir()
    ds.save_as(source / "P0099" / "new.dcm", enforce_file_format=True)
    _append_labels(source, [("P0099/new.dcm", "lesion")])
    before = read_manifest(out)

    recorder = Recorder()
    result = run_ingest(config(), source, out, KEY, mapper=recorder)
    assert recorder.files == ["P0099/new.dcm"]
    assert result.n_reused == N_FILES and result.n_files == N_FILES + 1
    after = read_manifest(out)
    assert len(after) == len(before) + 1
    added = after[after.content_hash == sha256_file(source / "P0099" / "new.dcm")]
    assert list(added.label_name) == ["lesion"]
    assert result.n_patients == SMALL.n_patients + 1


def test_changed_frame_policy_processes_everything_again(first: tuple[Path, Path]) -> None:
    source, out = first
    recorder = Recorder()
    result = run_ingest(config(frames="middle"), source, out, KEY, mapper=recorder)
    assert not result.unchanged and result.n_reused == 0
    assert sorted(recorder.files) == sorted(_labels(source).path)


def test_changed_key_processes_everything_again(first: tuple[Path, Path]) -> None:
    source, out = first
    before = set(read_manifest(out).patient_id)
    recorder = Recorder()
    result = run_ingest(config(), source, out, b"a-different-key-0123456789", mapper=recorder)
    assert result.n_reused == 0 and len(recorder.files) == N_FILES
    assert before.isdisjoint(read_manifest(out).patient_id)


def test_state_file_holds_no_clear_text_path(source: Path, tmp_path: Path) -> None:
    # Hospital exports name folders after patients: give one patient's folder their name.
    family = str(pydicom.dcmread(source / "P0002" / "IM0001.dcm").PatientName).split("^")[0]
    (source / "P0002").rename(source / family)
    labels = _labels(source)
    labels["path"] = labels.path.str.replace("P0002/", f"{family}/")
    labels.to_csv(source / "labels.csv", index=False)
    out = tmp_path / "out"
    run_ingest(config(), source, out, KEY)
    text = (out / STATE_FILE).read_text()
    state = json.loads(text)
    names = {part for rel in labels.path for part in Path(rel).parts}
    names |= {Path(rel).stem for rel in labels.path}
    assert family in names and len(names) >= SMALL.n_patients + 2
    leaked = [n for n in names if n in text]
    assert leaked == [] and str(source) not in text and "source" not in text
    assert len(state["files"]) == N_FILES
    assert all(re.fullmatch(r"[0-9a-f]{32}", token) for token in state["files"])
    # the tokens are keyed: another key gives other tokens for the same paths
    other = json.loads((out / STATE_FILE).read_text())
    run_ingest(config(), source, out, b"a-different-key-0123456789")
    assert set(json.loads((out / STATE_FILE).read_text())["files"]).isdisjoint(other["files"])


# --------------------------------------------------------------------- losses and duplicates


def test_too_many_quarantined_files_fail_naming_the_threshold(source: Path, tmp_path: Path) -> None:
    for name in ("junk1.dcm", "junk2.dcm"):
        (source / name).write_text("not DICOM")
    _append_labels(source, [("junk1.dcm", "normal"), ("junk2.dcm", "lesion")])
    out = tmp_path / "out"
    with pytest.raises(IngestFailed, match=r"ingest\.max_quarantine_fraction = 5\.0%") as info:
        run_ingest(config(max_quarantine_fraction=0.05), source, out, KEY)
    assert f"2 of {N_FILES + 2} file(s)" in str(info.value)
    assert not out.exists()
    # tolerated at 10%
    result = run_ingest(config(max_quarantine_fraction=0.1), source, out, KEY)
    assert result.n_quarantined == 2 and result.n_images == N_FILES


def test_same_bytes_under_two_names_is_a_duplicate(source: Path, tmp_path: Path) -> None:
    shutil.copy(source / "P0001" / "IM0001.dcm", source / "P0001" / "copy.dcm")
    label = _labels(source).set_index("path").label["P0001/IM0001.dcm"]
    _append_labels(source, [("P0001/copy.dcm", label)])
    out = tmp_path / "out"
    result = run_ingest(config(), source, out, KEY)
    assert result.outcomes == {"duplicate": 1} and result.n_images == N_FILES
    quarantine = pd.read_csv(out / "quarantine.csv").set_index("path")
    assert quarantine.loc["P0001/copy.dcm", "outcome"] == "duplicate"
    assert quarantine.loc["P0001/copy.dcm", "reason"] == "same content as P0001/IM0001.dcm"
    sha = sha256_file(source / "P0001" / "copy.dcm")
    assert (read_manifest(out).content_hash == sha).sum() == 1


# -------------------------------------------------------------------------------- workers


def test_two_worker_processes_give_the_same_output_as_one(source: Path, tmp_path: Path) -> None:
    serial = run_ingest(config(shard_size=8), source, tmp_path / "one", KEY)
    pooled = run_ingest(config(workers=2, shard_size=8), source, tmp_path / "two", KEY)
    for name in ("manifest.csv", "quarantine.csv", STATE_FILE):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    images = sorted(p.name for p in (tmp_path / "one" / "images").iterdir())
    assert images == sorted(p.name for p in (tmp_path / "two" / "images").iterdir())
    assert len(images) == N_FILES and serial.data_hash == pooled.data_hash


# ------------------------------------------------- once bugs: settings, thresholds, conflicts


def test_renamed_classes_reach_the_manifest(source: Path, tmp_path: Path) -> None:
    labels = _labels(source)
    labels["label"] = labels.label.map({name: str(i) for i, name in enumerate(CLASSES)})
    labels.to_csv(source / "labels.csv", index=False)
    out = tmp_path / "out"
    run_ingest(config(), source, out, KEY)
    run_ingest(config(classes=["healthy", "lesion"]), source, out, KEY)
    assert set(read_manifest(out).label_name) == {"healthy", "lesion"}


def test_stricter_quarantine_threshold_applies_on_rerun(source: Path, tmp_path: Path) -> None:
    for name in ("junk1.dcm", "junk2.dcm"):
        (source / name).write_text("not DICOM")
    _append_labels(source, [("junk1.dcm", "normal"), ("junk2.dcm", "lesion")])
    out = tmp_path / "out"
    run_ingest(config(max_quarantine_fraction=0.5), source, out, KEY)
    with pytest.raises(IngestFailed, match="max_quarantine_fraction"):
        run_ingest(config(max_quarantine_fraction=0.05), source, out, KEY)


def test_sop_conflict_is_re_decided_when_the_kept_file_goes(source: Path, tmp_path: Path) -> None:
    kept = source / "P0001" / "IM0001.dcm"
    ds = pydicom.dcmread(kept)
    cropped = ds.pixel_array[:40, :40].copy()  # same SOPInstanceUID, other image
    ds.set_pixel_data(
        cropped, ds.PhotometricInterpretation, int(ds.BitsStored), generate_instance_uid=False
    )
    ds.save_as(source / "P0001" / "ZZ.dcm", enforce_file_format=True)
    label = _labels(source).set_index("path").label["P0001/IM0001.dcm"]
    _append_labels(source, [("P0001/ZZ.dcm", label)])
    out = tmp_path / "out"
    first = run_ingest(config(), source, out, KEY)
    assert first.outcomes == {"quarantined": 1}  # ZZ conflicts with IM0001

    kept.unlink()
    labels = _labels(source)
    labels[labels.path != "P0001/IM0001.dcm"].to_csv(source / "labels.csv", index=False)
    incremental = run_ingest(config(), source, out, KEY)
    fresh = run_ingest(config(), source, tmp_path / "fresh", KEY)
    assert fresh.n_images == N_FILES and fresh.n_quarantined == 0
    assert incremental.n_images == fresh.n_images
    assert (out / "manifest.csv").read_bytes() == (tmp_path / "fresh" / "manifest.csv").read_bytes()


def test_conflicting_duplicate_does_not_depend_on_shard_order(source: Path, tmp_path: Path) -> None:
    first_path = "P0001/IM0001.dcm"
    shutil.copy(source / first_path, source / "P0001" / "ZZ.dcm")
    label = _labels(source).set_index("path").label[first_path]
    other = CLASSES[1 - CLASSES.index(label)]
    _append_labels(source, [("P0001/ZZ.dcm", other)])
    in_order = run_ingest(config(shard_size=1), source, tmp_path / "a", KEY)
    out_of_order = run_ingest(
        config(shard_size=1), source, tmp_path / "b", KEY, mapper=reversed_mapper
    )
    sha = sha256_file(source / first_path)
    for folder in ("a", "b"):
        quarantine = pd.read_csv(tmp_path / folder / "quarantine.csv").set_index("path")
        assert quarantine.loc["P0001/ZZ.dcm", "category"] == "conflicting duplicate"
        manifest = read_manifest(tmp_path / folder)
        assert list(manifest[manifest.content_hash == sha].label_name) == [label]
    assert in_order.data_hash == out_of_order.data_hash


def test_a_test_patient_stays_out_of_training_when_patients_are_added() -> None:
    params = SplitParams()  # seed 42: 0001, 0006, 0007 hash to train, 0002 to val, 0000 to test
    version_1 = pd.DataFrame({"patient_id": ["PSN-0001", "PSN-0002", "PSN-0006", "PSN-0007"]})
    version_2 = pd.DataFrame({"patient_id": [*version_1.patient_id, "PSN-0000"]})
    before = assign_splits(version_1.assign(label=1), params)
    after = assign_splits(version_2.assign(label=1), params, previous=before)
    assert after["PSN-0000"] == "test"
    lent = [pid for pid, split in before.items() if split == "test"]
    assert lent == ["PSN-0006"]  # lent to test: the class had no test patient
    assert after["PSN-0006"] != "train"


def test_held_out_patients_stay_held_out_through_a_re_ingest(first: tuple[Path, Path]) -> None:
    source, out = first
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    trained = sorted(set(manifest.patient_id[manifest.split == "train"]))[0]
    # As if this patient had been lent to test by an earlier, smaller version of the data.
    manifest.loc[manifest.patient_id == trained, "split"] = "test"
    manifest.to_csv(out / "manifest.csv", index=False)
    state = json.loads((out / STATE_FILE).read_text())
    state["outputs"] = output_hashes(out)  # as the ingest that lent it would have written
    (out / STATE_FILE).write_text(json.dumps(state))
    ds = pydicom.dcmread(source / "P0001" / "IM0001.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.PatientID = "MRN-NEW-0098"
    (source / "P0098").mkdir()
    ds.save_as(source / "P0098" / "new.dcm", enforce_file_format=True)
    _append_labels(source, [("P0098/new.dcm", "lesion")])
    run_ingest(config(), source, out, KEY)
    after = read_manifest(out)
    assert set(after.split[after.patient_id == trained]) == {"test"}
    run_ingest(config(), source, tmp_path_fresh := out.parent / "fresh", KEY)
    fresh = read_manifest(tmp_path_fresh)
    assert set(fresh.split[fresh.patient_id == trained]) == {"train"}  # no history: hashed


def test_an_edited_output_is_not_trusted_by_the_next_run(first: tuple[Path, Path]) -> None:
    source, out = first
    original = (out / "manifest.csv").read_bytes()
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    manifest.loc[0, "split"] = "train" if manifest.loc[0, "split"] != "train" else "test"
    manifest.to_csv(out / "manifest.csv", index=False)
    result = run_ingest(config(), source, out, KEY)
    assert not result.unchanged
    assert (out / "manifest.csv").read_bytes() == original
