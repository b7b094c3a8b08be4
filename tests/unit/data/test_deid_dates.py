"""Date shifts per patient, and merging the PHI audits of several shards."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pydicom
from pydicom import examples
from pydicom.dataset import Dataset

from medflow.data.deid import Deidentifier, PhiAudit
from tests.helpers.deid_key import KEY

OTHER_KEY = b"another-unit-test-key-98765"


def _study(patient_id: str, date: str, time: str = "101500", **attrs: str) -> Dataset:
    """A real CT file of `patient_id`, acquired at date/time."""
    ds = pydicom.dcmread(examples.get_path("ct"))
    ds.PatientID = patient_id
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _when(ds: Dataset) -> datetime:
    return datetime.strptime(f"{ds.StudyDate}{str(ds.StudyTime)[:6]}", "%Y%m%d%H%M%S")


def _shift(deid: Deidentifier, ds: Dataset) -> timedelta:
    before = _when(ds)
    return _when(deid.deidentify(ds)) - before


def test_different_patients_get_different_shifts() -> None:
    deid = Deidentifier(KEY)
    shifts = [_shift(deid, _study(f"MRN{n:06d}", "20200115")) for n in range(6)]
    assert len(set(shifts)) == 6
    assert all(s < timedelta(0) for s in shifts)  # dicognito moves dates back


def test_same_patient_same_shift_across_studies_and_runs() -> None:
    first = Deidentifier(KEY)
    a = _shift(first, _study("MRN000123", "20200115", "083000"))
    b = _shift(first, _study("MRN000456", "20200115", "083000"))  # someone else in between
    c = _shift(first, _study("MRN000123", "20221130", "170000"))
    rerun = _shift(Deidentifier(KEY), _study("MRN000123", "20200115", "083000"))
    assert a == c == rerun and a != b


def test_intervals_within_a_patient_are_kept() -> None:
    deid = Deidentifier(KEY)
    early = deid.deidentify(_study("MRN000777", "20200115", "083000"))
    late = deid.deidentify(_study("MRN000777", "20200301", "141500"))
    assert _when(late) - _when(early) == datetime(2020, 3, 1, 14, 15) - datetime(2020, 1, 15, 8, 30)
    assert early.StudyDate != "20200115"


def test_shift_depends_on_the_key() -> None:
    mine = _shift(Deidentifier(KEY), _study("MRN000123", "20200115"))
    theirs = _shift(Deidentifier(OTHER_KEY), _study("MRN000123", "20200115"))
    assert mine != theirs


def test_without_patient_id_the_study_is_the_patient() -> None:
    deid = Deidentifier(KEY)
    one = _study("", "20200115")
    same_study = _study("", "20200115", StudyInstanceUID=one.StudyInstanceUID)
    other_study = _study("", "20200115")
    shifts = [_shift(deid, ds) for ds in (one, same_study, other_study)]
    assert shifts[0] == shifts[1] != shifts[2]
    assert one.PatientID == same_study.PatientID != other_study.PatientID


# ---------------------------------------------------------------------------- PhiAudit.merge


def test_merged_audit_finds_the_values_of_every_shard(tmp_path: Path) -> None:
    shard_a, shard_b = PhiAudit(), PhiAudit()
    shard_a.add("PatientName", "Vexmoor^Alba")  # complex: found through its longest word
    shard_a.add("PatientID", "AB")  # too short to search for
    shard_b.add("PatientID", "MRN4455667")
    shard_b.add("AccessionNumber", "MRN4455667")  # the same value, another kind
    shard_b.add("InstitutionName", "Quillby General")
    merged = PhiAudit()
    merged.merge(shard_a)
    merged.merge(shard_b)

    assert len(merged) == len(shard_a) + len(shard_b)
    assert merged.n_unscannable == 1
    assert merged.kinds_in_text("scan of VEXMOOR^ALBA") == {"PatientName"}
    assert merged.kinds_in_text("id mrn4455667, ok") == {"PatientID", "AccessionNumber"}
    assert merged.kinds_in_text("from quillby general") == {"InstitutionName"}
    assert merged.kinds_in_text("MRN44556678 Vexmoor") == set()  # not whole values

    report = tmp_path / "report.csv"
    report.write_text("path,reason\nVexmoor^Alba/1.dcm,unreadable\n")
    assert [f.kind for f in merged.scan([report])] == ["PatientName"]
    assert PhiAudit().scan([report]) == []


def test_merge_unions_kinds_and_leaves_the_source_alone() -> None:
    mine, theirs = PhiAudit(), PhiAudit()
    mine.add("PatientID", "MRN9988776")
    theirs.add("OtherPatientIDs", "MRN9988776")
    theirs.add("PatientName", "Tollan^Brisk")
    mine.merge(theirs)
    assert mine.kinds_in_text("MRN9988776") == {"PatientID", "OtherPatientIDs"}
    assert theirs.kinds_in_text("MRN9988776") == {"OtherPatientIDs"}
    assert mine.kinds_in_text("Tollan^Brisk") == {"PatientName"}


def test_merge_of_collected_datasets_covers_both_patients() -> None:
    a = _study("MRN000111", "20200115", PatientName="Orrin^Kael")
    b = _study("MRN000222", "20200115", PatientName="Sevra^Lune")
    audits = []
    for ds in (a, b):
        deid = Deidentifier(KEY)
        deid.deidentify(ds)
        audits.append(deid.audit)
    merged = PhiAudit()
    for audit in audits:
        merged.merge(audit)
    assert "PatientID" in merged.kinds_in_text("MRN000111 and MRN000222")
    assert merged.kinds_in_text("ORRIN") >= {"PatientName component"}
    assert merged.kinds_in_text("sevra") >= {"PatientName component"}
    assert audits[0].kinds_in_text("sevra") == set()
