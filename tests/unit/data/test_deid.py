from __future__ import annotations

import io
import logging
from pathlib import Path

import pydicom
import pydicom.examples
import pytest

from medflow.data.deid import (
    DEMO_KEY,
    KEY_ENV,
    KEY_FILE_ENV,
    Deidentifier,
    PhiAudit,
    resolve_deid_key,
)
from medflow.errors import IngestFailed
from tests.helpers.deid_key import KEY
from tests.helpers.identifiers import dataset_values

OTHER_KEY = b"another-unit-test-key-987"


def _first_file(folder: Path) -> Path:
    return folder / "P0001" / "IM0001.dcm"


def _encoded(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_deidentify_removes_identifying_values(synth_dir: Path) -> None:
    ds = pydicom.dcmread(_first_file(synth_dir))
    ds.private_block(0x0011, "ACME HOSPITAL", create=True).add_new(0x01, "LO", "private note")
    originals = dataset_values(ds, min_length=3)
    assert {"PatientName", "PatientID", "PatientBirthDate", "InstitutionName"} <= set(
        originals.values()
    )
    original_id = str(ds.PatientID)

    deid = Deidentifier(KEY)
    deid.deidentify(ds)
    data = _encoded(ds)

    for value, kind in originals.items():
        assert value.encode() not in data, f"original {kind} still present"
    assert b"ACME HOSPITAL" not in data and b"private note" not in data
    assert ds.PatientID == ds.PatientName == deid.patient_pseudonym(original_id)
    assert str(ds.PatientID).startswith("PSN-")
    assert ds.PatientIdentityRemoved == "YES"
    assert "Basic Application Confidentiality Profile" in ds.DeidentificationMethod
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # What the model needs survives.
    assert ds.Modality in ("DX", "CR") and ds.Manufacturer and ds.pixel_array.size


def test_pydicom_example_is_deidentified_and_audited() -> None:
    original_bytes = pydicom.examples.get_path("ct").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(original_bytes))
    originals = dataset_values(ds, min_length=3)
    deid = Deidentifier(KEY)
    deid.deidentify(ds)
    data = _encoded(ds)
    for value, kind in originals.items():
        assert value.encode() not in data, f"original {kind} still present"


def test_phi_audit_finds_kinds_in_originals_not_in_outputs(synth_dir: Path, tmp_path: Path) -> None:
    source = _first_file(synth_dir)
    deid = Deidentifier(KEY)
    ds = deid.deidentify(pydicom.dcmread(source))
    out = tmp_path / "out.dcm"
    out.write_bytes(_encoded(ds))

    assert deid.audit.scan([out]) == []
    kinds = {f.kind for f in deid.audit.scan([source])}
    assert {"PatientName", "PatientID", "PatientBirthDate", "SOPInstanceUID"} <= kinds


def test_phi_audit_reports_kind_and_file_never_the_value(tmp_path: Path) -> None:
    audit = PhiAudit()
    audit.add("PatientName component", "Quovyxpim")
    audit.add("PatientID", "MRN12345678")
    audit.add("InstitutionName", "St. Nowhere General")
    log = tmp_path / "run.log"
    log.write_text("ingest done for quovyxpim; nothing else\nsite: St. Nowhere General\n")
    findings = audit.scan([log])
    assert {f.kind for f in findings} == {"PatientName component", "InstitutionName"}
    assert all(f.file == log for f in findings)
    assert all("vyx" not in str(f).lower() and "Nowhere" not in str(f) for f in findings)


def test_phi_audit_matches_whole_words_only(tmp_path: Path) -> None:
    audit = PhiAudit()
    audit.add("PatientID", "123456")
    audit.add("PatientName component", "Lee")
    audit.add("PatientID", "12")  # too short to search for: counted, not matched
    text = tmp_path / "manifest.csv"
    text.write_text("2.1001234567890,Sleet,1123456.5,images/x.dcm,12\n")
    assert audit.scan([text]) == []
    assert audit.n_unscannable == 1
    text.write_text("x,123456,y\n")
    assert [f.kind for f in audit.scan([text])] == ["PatientID"]


def test_pseudonyms_stable_for_a_key_and_different_for_another(synth_dir: Path) -> None:
    path = _first_file(synth_dir)
    a, b, c = Deidentifier(KEY), Deidentifier(KEY), Deidentifier(OTHER_KEY)
    assert a.patient_pseudonym("MRN1") == b.patient_pseudonym("MRN1")
    assert a.patient_pseudonym("MRN1") != a.patient_pseudonym("MRN2")
    assert a.patient_pseudonym("MRN1") != c.patient_pseudonym("MRN1")
    da, db, dc = (d.deidentify(pydicom.dcmread(path)) for d in (a, b, c))
    for keyword in ("PatientID", "StudyInstanceUID", "SOPInstanceUID", "StudyDate"):
        assert da.get(keyword) == db.get(keyword)
    for keyword in ("PatientID", "StudyInstanceUID", "SOPInstanceUID"):
        assert da.get(keyword) != dc.get(keyword)


def test_same_patient_same_pseudonym_across_files(synth_dir: Path) -> None:
    deid = Deidentifier(KEY)
    first, second = (
        deid.deidentify(pydicom.dcmread(synth_dir / "P0002" / name))
        for name in ("IM0001.dcm", "IM0002.dcm")
    )
    assert first.PatientID == second.PatientID
    assert first.SOPInstanceUID != second.SOPInstanceUID


def test_key_from_environment_or_key_file(tmp_path: Path) -> None:
    assert resolve_deid_key({KEY_ENV: KEY.decode()}, synthetic=False, allow_demo=False) == KEY
    key_file = tmp_path / "deid.key"
    key_file.write_bytes(OTHER_KEY + b"\n")
    env = {KEY_FILE_ENV: str(key_file)}
    assert resolve_deid_key(env, synthetic=False, allow_demo=False) == OTHER_KEY


def test_real_data_without_key_fails_with_instructions() -> None:
    with pytest.raises(IngestFailed, match=KEY_ENV) as info:
        resolve_deid_key({}, synthetic=False, allow_demo=True)
    assert KEY_FILE_ENV in str(info.value)


def test_demo_key_only_for_synthetic_data_when_allowed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert resolve_deid_key({}, synthetic=True, allow_demo=True) == DEMO_KEY
    assert "demo key" in caplog.text
    with pytest.raises(IngestFailed, match="allow_demo_key_for_synthetic"):
        resolve_deid_key({}, synthetic=True, allow_demo=False)


def test_short_or_unreadable_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(IngestFailed, match="at least 16"):
        resolve_deid_key({KEY_ENV: "short"}, synthetic=False, allow_demo=False)
    with pytest.raises(IngestFailed, match="cannot be read"):
        env = {KEY_FILE_ENV: str(tmp_path / "absent.key")}
        resolve_deid_key(env, synthetic=False, allow_demo=False)


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_phi_audit_finds_non_ascii_names_in_either_encoding(tmp_path: Path, encoding: str) -> None:
    audit = PhiAudit()
    audit.add("PatientName", "Müller^Jörg")
    out = tmp_path / "out.txt"
    out.write_bytes("report for MÜLLER^JÖRG\n".encode(encoding))
    assert [f.kind for f in audit.scan([out])] == ["PatientName"]


# An ID with a letter-free part is found by that part in the bytes as they are; one of
# letters only in upper-cased slices of the pixel data.
@pytest.mark.parametrize("value", ["MRN77441122", "MRNQWERTYZ"])
def test_pixel_data_is_searched_in_slices_across_their_edges(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from medflow.data import phi_audit

    monkeypatch.setattr(phi_audit, "_PIXEL_SLICE", 64)
    audit = PhiAudit()
    audit.add("PatientID", value)
    noise = bytes(range(200, 256)) * 4  # no word bytes
    lower = value.lower().encode()
    straddling = noise[:60] + lower + noise  # across the first slice's edge
    assert audit._kinds_in(b"", straddling) == {"PatientID"}
    mixed = noise[:20] + value[:3].lower().encode() + value[3:].encode() + noise
    assert audit._kinds_in(b"", mixed) == {"PatientID"}
    inside_a_word = noise[:63] + b"X" + value.encode() + noise  # the slice starts after the X
    assert audit._kinds_in(b"", inside_a_word) == set()
    after_a_lower_case_letter = noise[:20] + b"x" + lower + noise
    assert audit._kinds_in(b"", after_a_lower_case_letter) == set()
    assert audit._kinds_in(b"", noise + lower[:-1] + b"." + lower + b"_" + noise) == set()
