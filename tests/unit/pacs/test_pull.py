"""The pull's pieces without a server: filters by level, raw names, shards, paging, the
record, atomic files, and a PACS that is down."""

from __future__ import annotations

import socket
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medflow.config import PacsParams
from medflow.errors import PacsError
from medflow.pacs import pull as pull_module
from medflow.pacs.pull import _held, _mirror, _record, _shards, _Wanted
from medflow.pacs.query import search_all, shown_filters, split_filters
from medflow.pacs.retrieve import Item, RetrieveShard, _write, retrieve_shard, token
from tests.helpers.deid_key import KEY

STUDY, SERIES = generate_uid(), generate_uid()


def test_filters_split_into_study_and_series_levels():
    study, series = split_filters(
        {
            "StudyDate": "20240101-",
            "ModalitiesInStudy": "CR",
            "Modality": "CR",
            "BodyPartExamined": "CHEST",
        }
    )
    assert study == {"StudyDate": "20240101-", "ModalitiesInStudy": "CR"}
    assert series == {"Modality": "CR", "BodyPartExamined": "CHEST"}


def test_identifying_filter_values_are_never_shown():
    shown = shown_filters({"AccessionNumber": "ACC123", "PatientID": "MRN1", "Modality": "CR"})
    assert shown == {"AccessionNumber": "(hidden)", "Modality": "CR", "PatientID": "(hidden)"}


def test_tokens_are_keyed_stable_and_name_no_uid():
    a = token(KEY, "sop", STUDY)
    assert a == token(KEY, "sop", STUDY) and STUDY not in a and len(a) == 24
    assert a != token(KEY, "study", STUDY) and a != token(b"another-key-0123456789", "sop", STUDY)


def test_paging_stops_when_a_server_ignores_the_offset():
    # Orthanc 1.10 with ModalitiesInStudy: every page is the first one
    page = [{"0020000D": {"Value": [f"1.2.{i}"]}} for i in range(3)]
    calls = []

    def search(offset: int, limit: int) -> list[dict]:
        calls.append(offset)
        return page if len(calls) < 50 else []

    with pytest.MonkeyPatch.context() as m:
        m.setattr("medflow.pacs.query.PAGE", 3)
        found = search_all(PacsParams(url="http://x"), "search", search, "0020000D")
    assert len(found) == 3 and calls == [0, 3]


def test_shards_hold_about_shard_size_instances_and_never_split_a_series():
    items = [Item(STUDY, str(i), None, 3) for i in range(5)]
    shards = _shards(PacsParams(url="http://x"), Path("raw"), KEY, items, 4)
    assert [len(s.items) for s in shards] == [2, 2, 1]
    assert sum(s.n_expected for s in shards) == 15


def _instance(study: str = STUDY, series: str = SERIES) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality = "OT"
    return ds


def _shard(raw: Path, url: str = "http://127.0.0.1:9/dicom-web", **pacs) -> RetrieveShard:
    return RetrieveShard(PacsParams(url=url, **pacs), str(raw), KEY, ())


def test_instances_are_written_whole_under_tokens(tmp_path):
    ds = _instance()
    size = _write(_shard(tmp_path), ds, STUDY, SERIES)
    (path,) = list(tmp_path.rglob("*"))[-1:]
    assert path.name == f"{token(KEY, 'sop', ds.SOPInstanceUID)}.dcm"
    assert path.stat().st_size == size
    assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID  # preamble + file meta
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left
    with pytest.raises(PacsError, match="another study or series"):
        _write(_shard(tmp_path), _instance(series=generate_uid()), STUDY, SERIES)


def _wanted(study: str, series: str, label: int, keep: set[str] | None = None) -> _Wanted:
    return _Wanted(study, series, label, None, keep)


def test_record_digest_follows_the_result_and_labels_only(tmp_path):
    pacs = PacsParams(url="http://u:p@pacs:8042/dicom-web?x=1", filters={"Modality": "CR"})
    uids = [(generate_uid(), generate_uid()) for _ in range(3)]
    for study, series in uids:
        _write(_shard(tmp_path), _instance(study, series), study, series)
    wanted = [_wanted(s, se, i % 2) for i, (s, se) in enumerate(uids)]
    first = _record(pacs, tmp_path, KEY, wanted, ["normal", "lesion"], write_labels=True)
    again = _record(pacs, tmp_path, KEY, wanted, ["normal", "lesion"], write_labels=True)
    assert first == again and first.instances == first.studies == 3
    assert first.server == "http://pacs:8042/dicom-web"  # no user, no query
    relabelled = [_wanted(s, se, 1) for s, se in uids]
    other = _record(pacs, tmp_path, KEY, relabelled, ["normal", "lesion"], write_labels=True)
    assert other.digest != first.digest
    text = (tmp_path / "labels.csv").read_text()
    assert text.startswith("path,label\n") and text.count("lesion") == 3
    assert not any(u in text for pair in uids for u in pair)


def test_mirror_removes_what_the_query_no_longer_matches(tmp_path):
    kept, dropped = (generate_uid(), generate_uid()), (generate_uid(), generate_uid())
    extra = _instance(*kept)
    for study, series in (kept, dropped):
        _write(_shard(tmp_path), _instance(study, series), study, series)
    _write(_shard(tmp_path), extra, *kept)
    listed = {f"{token(KEY, 'sop', extra.SOPInstanceUID)}.dcm"}  # the server lists only it
    assert _mirror(tmp_path, KEY, [_wanted(*kept, 0, listed)]) == 2
    assert [p.name for p in tmp_path.rglob("*.dcm")] == list(listed)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1
    # a study wanted whole (no series filter, complete) keeps all its series
    whole = _Wanted(kept[0], None, 0, None, None)
    assert _mirror(tmp_path, KEY, [whole]) == 0 and len(list(tmp_path.rglob("*.dcm"))) == 1


def test_the_record_is_the_same_whether_a_study_was_planned_whole_or_by_series(tmp_path):
    study, series = generate_uid(), generate_uid()
    for _ in range(2):
        _write(_shard(tmp_path), _instance(study, series), study, series)
    pacs = PacsParams(url="http://pacs/dicom-web")
    by_series = _record(
        pacs, tmp_path, KEY, [_wanted(study, series, 1)], ["a", "b"], write_labels=True
    )
    whole = _record(
        pacs, tmp_path, KEY, [_Wanted(study, None, 1, None, None)], ["a", "b"], write_labels=True
    )
    assert by_series == whole and whole.instances == 2


def test_partial_files_of_a_killed_run_are_removed(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / ".x.dcm.123.tmp").write_bytes(b"half")
    pull_module._remove_partial(tmp_path)
    assert not _held(tmp_path / "a" / "b") and not list(tmp_path.rglob(".*"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_pacs_that_is_down_gives_an_error_naming_it_and_no_uid(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/dicom-web"
    sop = generate_uid()
    shard = RetrieveShard(
        PacsParams(url=url, retries=1, backoff_seconds=0.01),
        str(tmp_path),
        KEY,
        (Item(STUDY, SERIES, (sop,), 1), Item(STUDY, generate_uid(), None, 0)),
    )
    with pytest.raises(PacsError) as failed:
        retrieve_shard(shard, env={})
    message = str(failed.value)
    assert message.startswith(f"PACS {url}: WADO-RS retrieval")
    assert "connection refused" in message and "after 1 retries" in message
    assert STUDY not in message and SERIES not in message and sop not in message
    assert not list(tmp_path.rglob("*"))
