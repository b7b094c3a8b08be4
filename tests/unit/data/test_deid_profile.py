"""The Basic Application Level Confidentiality Profile: every attribute of Table E.1-1, each
option, private elements, free text, the method recorded, UIDs consistent across files."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import date, timedelta

import pydicom
import pytest
from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table
from pydicom import examples
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medflow.data.deid import (
    CLEAN_PIXEL_DATA,
    DESCRIPTORS,
    DEVICE_IDENTITY,
    NOT_SHIFTED,
    PATIENT_CHARACTERISTICS,
    Deidentifier,
    Profile,
    SafePrivateTag,
    add_method_code,
)
from tests.helpers.deid_key import KEY

# The table's lists and the action each stands for (its combined codes as medflow applies
# them: docs/ingest.md, "De-identification").
BASIC = {
    "X_TAGS": "X",
    "Z_TAGS": "Z",
    "D_TAGS": "D",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z",
    "X_Z_TAGS": "X",
    "X_D_TAGS": "X",
    "X_Z_D_TAGS": "X",
    "X_Z_U_STAR_TAGS": "K",
}
DATE_VRS = ("DA", "DT", "TM")
PROFILES = {
    "defaults": Profile(),
    "no options": Profile(retain_modified_dates=False, retain_patient_characteristics=False),
    "dates only": Profile(retain_patient_characteristics=False),
    "patient characteristics only": Profile(retain_modified_dates=False),
    "device identity": Profile(retain_device_identity=True),
    "clean descriptors": Profile(clean_descriptors=True),
    "all options": Profile(retain_device_identity=True, clean_descriptors=True),
}


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"  # in Table E.1-1 2026c, not yet in pydicom's dictionary


def _table() -> list[tuple[int, str]]:
    """(tag, basic action) of every single-tag entry of the library's table."""
    rows = []
    for name, action in BASIC.items():
        rows += [((e[0] << 16) | e[1], action) for e in getattr(table, name) if len(e) == 2]
    assert len(rows) == len({t for t, _ in rows}) > 600  # each attribute once
    return rows


def _value(tag: int, vr: str) -> object:
    """A distinctive original value of the VR."""
    n = tag & 0xFFFFFF
    values = {
        "AE": "AE%06X" % (n & 0xFFFFF),
        "AS": "042Y",
        "CS": f"ORIG{n:06X}",
        "DA": "20200315",
        "DT": "20200315101500",
        "TM": "101500",
        "DS": "12.5",
        "IS": "4242",
        "UI": f"1.2.826.0.1.3680043.99.{tag}",
        "UR": f"http://orig.example/{tag}",
        "PN": f"Origperson{n:06X}^Given",
        "AT": 0x00100010,
    }
    if vr in values:
        return values[vr]
    if vr in ("FL", "FD"):
        return 1.5
    if vr in ("SL", "SS", "UL", "US", "SV", "UV"):
        return 7
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return b"ORIGBYTES%08X" % tag
    if vr == "SQ":
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.99.{tag}.1"
        item.PersonName = "Inseq^Person"
        return Sequence([item])
    return f"orig text {n:06X}"  # LO, LT, SH, ST, UT, UC


def _full_dataset() -> tuple[Dataset, dict[int, object]]:
    """A CT image holding every attribute of Table E.1-1 with a value of its VR."""
    ds = pydicom.dcmread(examples.get_path("ct"))
    originals: dict[int, object] = {}
    for tag, _ in _table():
        if tag >> 16 in (0x0000, 0x0002):  # command and file meta groups: not in a data set
            continue
        vr = _vr(tag)
        ds.add_new(tag, vr, _value(tag, vr))
        originals[tag] = ds[tag].value
    ds.PatientID, ds.InstitutionName = "MRN-ORIG-0042", "Orig Hospital"
    originals[0x00100020], originals[0x00080080] = ds.PatientID, ds.InstitutionName
    ds.add_new(0x50000010, "US", 2)  # curve data (a repeating group): X
    ds.add_new(0x60003000, "OW", b"\x01\x02" * 8)  # overlay data: X
    ds.add_new(0x60004000, "LT", "overlay comment")  # overlay comments: X
    return ds, originals


def _expected(tag: int, vr: str, profile: Profile) -> str:
    keyword = keyword_for_tag(tag)
    if keyword in ("PatientID", "PatientName"):
        return "pseudonym"
    if keyword == "InstitutionName":
        return "site"
    if profile.retain_patient_characteristics and keyword in PATIENT_CHARACTERISTICS:
        return "K"
    if profile.retain_device_identity and keyword in DEVICE_IDENTITY:
        return "K"
    if profile.clean_descriptors and keyword in DESCRIPTORS:
        return "C"
    if profile.retain_modified_dates and vr in DATE_VRS and keyword not in NOT_SHIFTED:
        return "shift"
    return dict(_table())[tag]


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_attribute_of_table_e11_gets_its_action(name: str) -> None:
    profile = PROFILES[name]
    ds, originals = _full_dataset()
    deid = Deidentifier(KEY, profile=profile)
    deid.deidentify(ds)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)  # still a writable file
    days = deid.shift_days("MRN-ORIG-0042")
    problems = []
    for tag, original in originals.items():
        vr = _vr(tag)
        action = _expected(tag, vr, profile)
        elem = ds.get(tag)
        value = None if elem is None else elem.value
        ok = {
            "X": elem is None,
            "Z": elem is not None and not value,
            "K": elem is not None and (vr == "SQ" or value == original),
            # "orig text ...": words of the values removed from this file, so not clean;
            # a sequence keeps its items, whose attributes get their own actions
            "C": (elem is not None) if vr == "SQ" else elem is None,
            "pseudonym": value == deid.patient_pseudonym("MRN-ORIG-0042"),
            "site": value == deid.site_pseudonym("Orig Hospital"),
        }.get(action)
        if action == "D":
            ok = elem is not None and (value != original) and (vr == "SQ" or bool(value))
        elif action == "U":
            ok = value == deid.uid(str(original)) and str(value).startswith("2.25.")
        elif action == "shift" and vr == "TM":
            ok = value == original  # whole days move: the time of day stays
        elif action == "shift":
            day = date(2020, 3, 15) - timedelta(days=days)
            ok = str(value) == day.strftime("%Y%m%d") + str(original)[8:]
        if not ok:
            problems.append(f"{keyword_for_tag(tag) or hex(tag)} ({vr}): {action}, got {value!r}")
    assert not problems, problems
    for tag in (0x50000010, 0x60003000, 0x60004000):
        assert tag not in ds
    if profile.retain_device_identity:
        assert ds.DeviceUID == originals[pydicom.datadict.tag_for_keyword("DeviceUID")]
    # X/Z/U* sequences keep their items; the UIDs inside are mapped like any other.
    item = ds.ReferencedImageSequence[0]
    assert item.ReferencedSOPInstanceUID == deid.uid(f"1.2.826.0.1.3680043.99.{0x00081140}.1")
    assert item.PersonName == "ANONYMIZED"  # D: a dummy value
    assert item.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # not in the table: kept


def test_file_meta_and_preamble_are_deidentified() -> None:
    ds = pydicom.dcmread(examples.get_path("ct"))
    ds.preamble = b"SMITH JOHN".ljust(128, b"\0")
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITAL_PACS"
    original_sop = str(ds.SOPInstanceUID)
    deid = Deidentifier(KEY)
    deid.deidentify(ds)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    data = buf.getvalue()
    assert b"SMITH" not in data and b"HOSPITAL_PACS" not in data
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == deid.uid(original_sop)


def test_what_was_done_is_recorded() -> None:
    ds = pydicom.dcmread(examples.get_path("ct"))
    Deidentifier(KEY).deidentify(ds)
    assert ds.PatientIdentityRemoved == "YES"
    assert "Basic Application Confidentiality Profile" in ds.DeidentificationMethod
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in ds.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113107", "DCM"), ("113108", "DCM")]

    ds = pydicom.dcmread(examples.get_path("ct"))
    safe = (SafePrivateTag(0x0019, "ACME 1.0", 0x01),)
    profile = Profile(False, False, True, True, safe)
    Deidentifier(KEY, profile=profile).deidentify(ds)
    add_method_code(ds, CLEAN_PIXEL_DATA)
    add_method_code(ds, CLEAN_PIXEL_DATA)  # once only
    codes = [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113109", "113105", "113111", "113101"]
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert "StudyDate" in ds and ds.StudyDate == ""  # Z without the dates option
    with pytest.raises(ValueError, match="113199"):
        add_method_code(ds, "113199")


def test_private_elements_are_removed_unless_on_the_safe_list() -> None:
    def dataset() -> Dataset:
        ds = pydicom.dcmread(examples.get_path("ct"))
        block = ds.private_block(0x0019, "ACME 1.0", create=True)
        block.add_new(0x01, "LO", "SAFE-SETTING-17")
        block.add_new(0x02, "LO", "Dr Quentin Harrowgate")
        ds.private_block(0x0029, "OTHER VENDOR", create=True).add_new(0x10, "LO", "secret")
        return ds

    ds = Deidentifier(KEY).deidentify(dataset())
    assert not any(tag.is_private for tag in ds.keys())
    assert "SAFE-SETTING-17" not in str(ds)

    safe = (SafePrivateTag(0x0019, "acme 1.0", 0x01),)  # the creator's case does not matter
    ds = Deidentifier(KEY, profile=Profile(safe_private_tags=safe)).deidentify(dataset())
    kept = sorted(str(ds[tag].value) for tag in ds.keys() if tag.is_private)
    assert kept == ["ACME 1.0", "SAFE-SETTING-17"]  # the creator, and its one safe element


def _free_text_dataset() -> Dataset:
    """A CT image naming other people, a phone number and an address in free text."""
    ds = pydicom.dcmread(examples.get_path("ct"))
    ds.PatientName = "Vexmoor^Alba"
    ds.SeriesDescription = "CT chest, referred by Dr Quentin Harrowgate"
    ds.StudyDescription = "CHEST WITH CONTRAST"
    request = Dataset()
    request.RequestedProcedureDescription = "per Dr. Harrowgate: rule out PE"
    request.RequestedProcedureID = "RQ-99812"
    ds.RequestAttributesSequence = Sequence([request])
    ds.ImageComments = "call +44 20 7946 0958 before release"
    ds.PatientComments = "lives at 221 Baker Street, London NW1 6XE"
    ds.AdditionalPatientHistory = "Alba Vexmoor, smoker"
    ds.OperatorsName = "Tech^Morwenna"
    ds.ProtocolName = "CHEST ROUTINE"
    return ds


FREE_TEXT = (
    "Harrowgate",
    "Quentin",
    "7946",
    "0958",
    "Baker Street",
    "NW1 6XE",
    "Morwenna",
    "Vexmoor",
    "RQ-99812",
)


@pytest.mark.parametrize("clean", [False, True])
def test_other_persons_phone_and_address_never_reach_the_output(clean: bool) -> None:
    ds = _free_text_dataset()
    Deidentifier(KEY, profile=Profile(clean_descriptors=clean)).deidentify(ds)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    data = buf.getvalue().upper()
    assert [v for v in FREE_TEXT if v.upper().encode() in data] == []
    assert "OperatorsName" not in ds and "AdditionalPatientHistory" not in ds
    assert "ImageComments" not in ds and "PatientComments" not in ds
    if clean:  # clean descriptors are kept, the rest removed
        assert ds.StudyDescription == "CHEST WITH CONTRAST"
        assert ds.ProtocolName == "CHEST ROUTINE"
        assert "SeriesDescription" not in ds
        assert "RequestedProcedureDescription" not in ds.RequestAttributesSequence[0]
    else:
        assert "StudyDescription" not in ds and "RequestAttributesSequence" not in ds


def test_a_descriptor_repeating_a_removed_value_is_not_clean() -> None:
    ds = pydicom.dcmread(examples.get_path("ct"))
    ds.PatientName = "Orrin^Kael"
    ds.StationName = "KAELWARD"
    ds.SeriesDescription = "ORRIN follow-up"
    ds.StudyDescription = "kaelward protocol"
    ds.ImageComments = "ax 5mm"
    Deidentifier(KEY, profile=Profile(clean_descriptors=True)).deidentify(ds)
    assert "SeriesDescription" not in ds and "StudyDescription" not in ds
    assert ds.ImageComments == "ax 5mm"


def test_pipeline_attributes_survive() -> None:
    ds = pydicom.dcmread(examples.get_path("ct"))
    ds.PatientSex, ds.PatientAge, ds.BurnedInAnnotation = "F", "054Y", "NO"
    ds.Manufacturer, ds.ImageType = "GE MEDICAL SYSTEMS", ["ORIGINAL", "PRIMARY", "AXIAL"]
    before = {k: ds.get(k) for k in ("Modality", "Rows", "Columns", "PixelSpacing", "SOPClassUID")}
    before |= {k: ds.get(k) for k in ("WindowCenter", "WindowWidth", "PhotometricInterpretation")}
    before |= {k: ds.get(k) for k in ("PatientSex", "PatientAge", "Manufacturer", "ImageType")}
    before |= {k: ds.get(k) for k in ("BurnedInAnnotation", "BitsStored", "RescaleSlope")}
    pixels = ds.pixel_array.copy()
    uids = [str(ds[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    deid = Deidentifier(KEY)
    deid.deidentify(ds)
    assert {k: ds.get(k) for k in before} == before
    assert (ds.pixel_array == pixels).all()
    new = [str(ds[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    assert new == [deid.uid(u) for u in uids]
    assert ds.InstitutionName.startswith("SITE-") and ds.PatientID.startswith("PSN-")


def test_uids_map_the_same_in_another_process_and_in_a_referencing_seg() -> None:
    image = pydicom.dcmread(examples.get_path("ct"))
    original = str(image.SOPInstanceUID)
    seg = Dataset()
    seg.file_meta = FileMetaDataset()
    seg.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    seg.SOPInstanceUID = generate_uid()
    seg.StudyInstanceUID = image.StudyInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    instance = Dataset()
    instance.ReferencedSOPClassUID = image.SOPClassUID
    instance.ReferencedSOPInstanceUID = original
    series.ReferencedInstanceSequence = Sequence([instance])
    seg.ReferencedSeriesSequence = Sequence([series])

    Deidentifier(KEY).deidentify(image)
    Deidentifier(KEY).deidentify(seg)  # another instance: nothing shared but the key
    reference = seg.ReferencedSeriesSequence[0]
    assert reference.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert reference.SeriesInstanceUID == image.SeriesInstanceUID
    assert seg.StudyInstanceUID == image.StudyInstanceUID

    code = (
        f"from medflow.data.deid import Deidentifier;print(Deidentifier({KEY!r}).uid({original!r}))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == image.SOPInstanceUID
