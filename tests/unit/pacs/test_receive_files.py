"""Filing received instances: names, labels.csv rows, class folders, holding and re-filing."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from medflow.errors import IngestFailed, PacsError
from medflow.pacs.receive_files import TMP_FOLDER, Filer, Targets, instance_name, uid_token
from tests.helpers.deid_key import KEY
from tests.helpers.dicom_files import image_dataset

CLASSES = ("normal", "lesion")


def _instance(accession: str = "", study: str | None = None) -> tuple[Dataset, bytes]:
    ds = image_dataset(np.zeros((4, 4), np.uint16), AccessionNumber=accession)
    if study:
        ds.StudyInstanceUID = study
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return ds, buf.getvalue()


def _filer(tmp_path: Path, labels: str | None = "", *, segmentation: bool = False) -> Filer:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    study_labels = None if segmentation else data / "study_labels.csv"
    if labels and study_labels:
        study_labels.write_text(labels)
    return Filer(Targets(data / "incoming", data / "held", study_labels, CLASSES, KEY))


def _store(filer: Filer, ds: Dataset, data: bytes) -> bool:
    return filer.store(data, ds.StudyInstanceUID, ds.SOPInstanceUID, ds.get("AccessionNumber"))


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _touch_later(path: Path, text: str) -> None:
    """Rewrite a file so its signature surely changes (coarse mtime clocks)."""
    path.write_text(text)
    later = time.time_ns() + 2_000_000_000
    os.utime(path, ns=(later, later))


def test_names_are_keyed_tokens_never_uids():
    study, sop = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    name = instance_name(KEY, study, sop)
    assert name == f"{uid_token(KEY, study)}/{uid_token(KEY, sop)}.dcm"
    assert study not in name and sop not in name and "1.2.826" not in name
    assert uid_token(KEY, study) != uid_token(b"another-key-0123456789", study)
    assert len(uid_token(KEY, study)) == 24


def test_class_folders_file_by_study_label_and_accession(tmp_path: Path):
    a, a_bytes = _instance()
    b, b_bytes = _instance(accession="ACC-77")
    filer = _filer(
        tmp_path,
        f"StudyInstanceUID,AccessionNumber,label\n{a.StudyInstanceUID},,lesion\n,ACC-77,0\n",
    )
    assert _store(filer, a, a_bytes) and _store(filer, b, b_bytes)
    source = filer.t.source
    where_a = source / "lesion/received" / instance_name(KEY, a.StudyInstanceUID, a.SOPInstanceUID)
    where_b = source / "normal/received" / instance_name(KEY, b.StudyInstanceUID, b.SOPInstanceUID)
    assert where_a.read_bytes() == a_bytes and where_b.read_bytes() == b_bytes
    assert _all_files(source) == sorted(
        p.relative_to(source).as_posix() for p in (where_a, where_b)
    )
    assert not list((source.parent / TMP_FOLDER).iterdir())  # no temp file left anywhere


def test_labels_csv_gets_a_row_kept_columns_and_is_idempotent(tmp_path: Path):
    a, a_bytes = _instance()
    filer = _filer(tmp_path, f"StudyInstanceUID,label\n{a.StudyInstanceUID},lesion\n")
    source = filer.t.source
    source.mkdir(parents=True, exist_ok=True)
    (source / "labels.csv").write_text("path,label,site\nold/x.dcm,normal,A\n")
    assert _store(filer, a, a_bytes) and _store(filer, a, a_bytes)  # the same instance twice
    rel = f"received/{instance_name(KEY, a.StudyInstanceUID, a.SOPInstanceUID)}"
    assert (source / rel).read_bytes() == a_bytes
    assert (source / "labels.csv").read_text() == (
        f"path,label,site\nold/x.dcm,normal,A\n{rel},lesion,\n"
    )
    # relabelled study: its row changes, no second row
    _touch_later(filer.t.study_labels, f"StudyInstanceUID,label\n{a.StudyInstanceUID},normal\n")
    assert _store(filer, a, a_bytes)
    assert (source / "labels.csv").read_text().splitlines()[1:] == [
        "old/x.dcm,normal,A",
        f"{rel},normal,",
    ]


def test_relabelled_study_leaves_no_copy_in_its_old_class_folder(tmp_path: Path):
    a, a_bytes = _instance()
    filer = _filer(tmp_path, f"StudyInstanceUID,label\n{a.StudyInstanceUID},lesion\n")
    _store(filer, a, a_bytes)
    _touch_later(filer.t.study_labels, f"StudyInstanceUID,label\n{a.StudyInstanceUID},normal\n")
    _store(filer, a, a_bytes)
    assert [p.split("/")[0] for p in _all_files(filer.t.source)] == ["normal"]


def test_unlabelled_study_is_held_then_filed_when_listed(tmp_path: Path):
    a, a_bytes = _instance()
    b, b_bytes = _instance(study=a.StudyInstanceUID)  # a second instance of the same study
    filer = _filer(tmp_path, None)  # no labels file yet
    assert not _store(filer, a, a_bytes) and not _store(filer, b, b_bytes)
    assert _all_files(filer.t.source) == [] and filer.held_count() == 2
    assert filer.refresh() == 0  # still nothing lists it
    _touch_later(filer.t.study_labels, f"StudyInstanceUID,label\n{a.StudyInstanceUID},lesion\n")
    assert filer.refresh() == 2
    assert filer.held_count() == 0 and not list(filer.t.held.iterdir())
    assert len(_all_files(filer.t.source / "lesion/received")) == 2
    assert filer.refresh() == 0  # labels unchanged: nothing re-read


def test_segmentation_files_without_labels(tmp_path: Path):
    a, a_bytes = _instance()
    filer = _filer(tmp_path, segmentation=True)
    assert _store(filer, a, a_bytes)
    assert _all_files(filer.t.source) == [
        f"received/{instance_name(KEY, a.StudyInstanceUID, a.SOPInstanceUID)}"
    ]


def test_bad_labels_file_stops_startup_with_its_name(tmp_path: Path):
    with pytest.raises(IngestFailed, match="study_labels.csv.*unknown label"):
        _filer(tmp_path, "StudyInstanceUID,label\n1.2.3,fracture\n")


def test_labels_csv_without_path_column_is_a_clear_error(tmp_path: Path):
    a, a_bytes = _instance()
    filer = _filer(tmp_path, f"StudyInstanceUID,label\n{a.StudyInstanceUID},lesion\n")
    filer.t.source.mkdir(parents=True, exist_ok=True)
    (filer.t.source / "labels.csv").write_text("file,class\n")
    with pytest.raises(PacsError, match="lacks the columns path,label") as err:
        _store(filer, a, a_bytes)
    assert a.StudyInstanceUID not in str(err.value)
    assert _all_files(filer.t.source) == ["labels.csv"]  # the instance was not filed unlabelled


def test_stale_temp_files_of_a_killed_receiver_are_removed(tmp_path: Path):
    tmp = tmp_path / "data" / TMP_FOLDER
    tmp.mkdir(parents=True)
    stale, fresh = tmp / "tmpold.dcm", tmp / "tmpnew.dcm"
    stale.write_bytes(b"half a file")
    fresh.write_bytes(b"being written by another receiver")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    _filer(tmp_path)
    assert not stale.exists() and fresh.exists()
