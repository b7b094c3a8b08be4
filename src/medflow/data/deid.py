"""De-identification by DICOM PS3.15 Annex E (Basic Application Level Confidentiality Profile).

`Deidentifier` applies Table E.1-1 and a `Profile`'s options with keyed pseudonyms: the same
key gives the same pseudonyms, UIDs and date shifts on every run and in every process.
`resolve_deid_key` is the only reader of the key's environment (entry points call it).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache
from pathlib import Path

from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table_e11
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from medflow.data.phi_audit import (
    AUDITED_KEYWORDS,
    PhiAudit,
    dictionary_vr,
    element_vr,
    own_elements,
    text_values,
)
from medflow.errors import IngestFailed

__all__ = [
    "AUDITED_KEYWORDS",
    "DEMO_KEY",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "METHOD_CODES",
    "Deidentifier",
    "PhiAudit",
    "Profile",
    "add_method_code",
    "resolve_deid_key",
]

logger = logging.getLogger(__name__)

KEY_ENV = "MEDFLOW_DEID_KEY"
KEY_FILE_ENV = "MEDFLOW_DEID_KEY_FILE"
MIN_KEY_BYTES = 16
# Public on purpose: it protects nothing and is only accepted for synthetic data.
DEMO_KEY = b"medflow-public-demo-key-for-synthetic-data-only"
TABLE = "DICOM PS3.15 Table E.1-1 2026c (dicom-anonymizer 2.1.0)"
METHOD = "MEDFLOW KEYED HMAC-SHA256 PSEUDONYMS AND UIDS"

_HOW_TO_SET = (
    f"set {KEY_ENV} to a secret of at least {MIN_KEY_BYTES} characters"
    f" (e.g. `export {KEY_ENV}=$(openssl rand -hex 32)`), or put it in a file readable only"
    f" by you and set {KEY_FILE_ENV} to that file's path. Keep the key out of the repository"
    " and store it safely: the same key is needed to reproduce the same pseudonyms"
)

# PS3.16 CID 7050 De-identification Method: the codes DeidentificationMethodCodeSequence holds.
BASIC_PROFILE = "113100"
CLEAN_PIXEL_DATA = "113101"
METHOD_CODES = {
    BASIC_PROFILE: "Basic Application Confidentiality Profile",
    CLEAN_PIXEL_DATA: "Clean Pixel Data Option",
    "113105": "Clean Descriptors Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113109": "Retain Device Identity Option",
    "113111": "Retain Safe Private Option",
}

# ------------------------------------------------------------------------ the profile

# The actions medflow applies. Table E.1-1's combined codes leave a choice: X/Z, X/D and
# X/Z/D are applied as X (removed), Z/D as Z (emptied), X/Z/U* (a sequence of references)
# keeps the sequence, whose UIDs are then replaced as any U.
REMOVE, EMPTY, DUMMY, UID, KEEP, CLEAN, SHIFT = "X", "Z", "D", "U", "K", "C", "shift"
_TABLE_LISTS = {
    "X_TAGS": REMOVE,
    "Z_TAGS": EMPTY,
    "D_TAGS": DUMMY,
    "U_TAGS": UID,
    "Z_D_TAGS": EMPTY,
    "X_Z_TAGS": REMOVE,
    "X_D_TAGS": REMOVE,
    "X_Z_D_TAGS": REMOVE,
    "X_Z_U_STAR_TAGS": KEEP,
}

# The option columns of Table E.1-1, which dicom-anonymizer does not ship (idiscore does, but
# under the GPL). Each lists the attributes an option lets medflow keep (K) or clean (C), by
# keyword; a subset of the standard's column, which the standard allows (an attribute not
# listed keeps its basic action: removing more is always conformant).
# Retain Patient Characteristics Option (113108): K.
PATIENT_CHARACTERISTICS = (
    "PatientAge",
    "PatientSex",
    "PatientSexNeutered",
    "PatientSize",
    "PatientWeight",
    "EthnicGroup",
    "PregnancyStatus",
    "SmokingStatus",
)
# Retain Device Identity Option (113109): K. Calibration dates are left out (they stay dates).
DEVICE_IDENTITY = (
    "DeviceSerialNumber",
    "DeviceUID",
    "DeviceDescription",
    "DeviceLabel",
    "DetectorID",
    "StationName",
    "GantryID",
    "GeneratorID",
    "PlateID",
    "CassetteID",
    "XRayDetectorID",
    "XRayDetectorLabel",
    "XRaySourceID",
    "UniqueDeviceIdentifier",
    "UDISequence",
    "TransducerIdentificationSequence",
    "ManufacturerDeviceClassUID",
    "ManufacturerDeviceIdentifier",
    "SourceSerialNumber",
    "TreatmentMachineName",
    "LensMake",
    "LensModel",
    "LensSerialNumber",
    "LensSpecification",
)
# Clean Descriptors Option (113105): C, the descriptors and comments of image IODs. A cleaned
# value is kept only when `_is_clean`; a sequence here keeps its items, whose attributes get
# their own actions.
DESCRIPTORS = (
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "ImageComments",
    "FrameComments",
    "PatientComments",
    "AdditionalPatientHistory",
    "MedicalAlerts",
    "StudyComments",
    "AcquisitionComments",
    "AcquisitionDeviceProcessingDescription",
    "AcquisitionProtocolDescription",
    "ContrastBolusAgent",
    "DerivationDescription",
    "IdentifyingComments",
    "AdmittingDiagnosesDescription",
    "PerformedProcedureStepDescription",
    "CommentsOnThePerformedProcedureStep",
    "CommentsOnRadiationDose",
    "ScheduledProcedureStepDescription",
    "RequestAttributesSequence",
    "RequestedProcedureDescription",
    "RequestedProcedureComments",
    "RequestedSeriesDescription",
    "RequestedContrastAgent",
    "ReasonForStudy",
    "ReasonForVisit",
    "ReasonForTheRequestedProcedure",
    "ReasonForTheImagingServiceRequest",
    "ImagingServiceRequestComments",
    "VisitComments",
)
# Retain Longitudinal Temporal Information with Modified Dates Option (113107): every date
# and date-time of the table is shifted (times of day are kept), except the patient's birth
# (its column is empty there) and GPS time stamps.
NOT_SHIFTED = ("PatientBirthDate", "PatientBirthTime", "GPSTimeStamp")
# Besides Table E.1-1: file meta attributes naming the sending systems.
_REMOVED_META_KEYWORDS = (
    "SourceApplicationEntityTitle",
    "SendingApplicationEntityTitle",
    "ReceivingApplicationEntityTitle",
    "PrivateInformationCreatorUID",
    "PrivateInformation",
)
# As pydicom's keys: a Dataset made from a dict keeps them as given
_METHOD_CODE_SEQUENCE, _CODE_VALUE, _CODING_SCHEME, _CODE_MEANING = (
    Tag(k)
    for k in (
        "DeidentificationMethodCodeSequence",
        "CodeValue",
        "CodingSchemeDesignator",
        "CodeMeaning",
    )
)
_PSEUDONYMISED = {tag_for_keyword(k): k for k in ("PatientID", "PatientName", "InstitutionName")}
_DUMMY_TEXT = "ANONYMIZED"
_DUMMIES = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000Y"}
_NUMERIC_VRS = frozenset({"DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})
_TEXT_VRS = frozenset({"AE", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_DATE_VRS = frozenset({"DA", "DT", "TM"})


@dataclass(frozen=True)
class SafePrivateTag:
    """A private element kept by the Retain Safe Private Option: its group, the private
    creator that reserved its block, and its element within the block (0x00-0xFF)."""

    group: int
    creator: str
    element: int


@dataclass(frozen=True)
class Profile:
    """The Basic Profile's options (see DeidParams in medflow.config for their meaning)."""

    retain_modified_dates: bool = True
    retain_patient_characteristics: bool = True
    retain_device_identity: bool = False
    clean_descriptors: bool = False
    safe_private_tags: tuple[SafePrivateTag, ...] = ()

    def method_codes(self) -> list[str]:
        """The CID 7050 codes of this profile and its options in use."""
        flags = (
            ("113107", self.retain_modified_dates),
            ("113108", self.retain_patient_characteristics),
            ("113109", self.retain_device_identity),
            ("113105", self.clean_descriptors),
            ("113111", bool(self.safe_private_tags)),
        )
        return [BASIC_PROFILE] + [code for code, on in flags if on]


def table_actions() -> dict[int, str]:
    """Table E.1-1's action per tag (its combined codes resolved, see above), from
    dicom-anonymizer; repeating groups (curves, overlays) are in `masked_actions`."""
    actions: dict[int, str] = {}
    for name, action in _TABLE_LISTS.items():
        for entry in getattr(table_e11, name):
            if len(entry) == 2:
                actions[(entry[0] << 16) | entry[1]] = action
    return actions


def masked_actions() -> list[tuple[int, int, int, int, str]]:
    """Table entries of repeating groups: (group, element, group mask, element mask, action)."""
    return [
        (*entry, action)
        for name, action in _TABLE_LISTS.items()
        for entry in getattr(table_e11, name)
        if len(entry) == 4
    ]


@cache
def _actions(profile: Profile) -> dict[int, str]:
    """Tag -> action for this profile: the table, then its options."""
    actions = table_actions()
    if profile.retain_modified_dates:
        not_shifted = {tag_for_keyword(k) for k in NOT_SHIFTED}
        for tag in actions:
            if tag not in not_shifted and dictionary_vr(tag) in _DATE_VRS:
                actions[tag] = SHIFT
    options = (
        (profile.retain_patient_characteristics, PATIENT_CHARACTERISTICS, KEEP),
        (profile.retain_device_identity, DEVICE_IDENTITY, KEEP),
        (profile.clean_descriptors, DESCRIPTORS, CLEAN),
    )
    for on, keywords, action in options:
        if on:
            actions.update({_tag(k): action for k in keywords})
    return actions


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword} is not a DICOM keyword pydicom knows")
    return tag


def add_method_code(ds: Dataset, code: str) -> None:
    """Record one more de-identification method (a METHOD_CODES key, e.g. CLEAN_PIXEL_DATA
    after pixels were cleaned) in ds's DeidentificationMethodCodeSequence, once."""
    if code not in METHOD_CODES:
        raise ValueError(f"unknown de-identification method code {code!r}: {list(METHOD_CODES)}")
    if _METHOD_CODE_SEQUENCE not in ds:
        ds[_METHOD_CODE_SEQUENCE] = DataElement(_METHOD_CODE_SEQUENCE, "SQ", Sequence())
    items = ds[_METHOD_CODE_SEQUENCE].value
    if any(str(item.get("CodeValue", "")) == code for item in items):
        return
    # The elements as `item.CodeValue = code` makes them, without its lookups by keyword
    values = ((_CODE_VALUE, "SH", code), (_CODING_SCHEME, "SH", "DCM"))
    values += ((_CODE_MEANING, "LO", METHOD_CODES[code]),)
    items.append(Dataset({tag: DataElement(tag, vr, value) for tag, vr, value in values}))


# ------------------------------------------------------------------------------ the key


def resolve_deid_key(environ: Mapping[str, str], *, synthetic: bool, allow_demo: bool) -> bytes:
    """The pseudonymisation key from MEDFLOW_DEID_KEY or the file MEDFLOW_DEID_KEY_FILE names.

    Only synthetic data may fall back to the public demo key (when allow_demo is set);
    anything else without a key raises IngestFailed saying how to provide one.
    """
    value = environ.get(KEY_ENV, "")
    if value.strip():
        key, origin = value.strip().encode("utf-8"), f"${KEY_ENV}"
    elif environ.get(KEY_FILE_ENV, "").strip():
        path = Path(environ[KEY_FILE_ENV].strip()).expanduser()
        try:
            key = path.read_bytes().strip()
        except OSError as exc:
            raise IngestFailed(
                f"${KEY_FILE_ENV} names {path}, which cannot be read"
                f" ({type(exc).__name__}: {exc.strerror or exc}); {_HOW_TO_SET}"
            ) from exc
        origin = f"the file ${KEY_FILE_ENV} names ({path})"
    elif synthetic and allow_demo:
        logger.warning(
            "no de-identification key set: using the PUBLIC demo key, acceptable for synthetic"
            " data only (deid.allow_demo_key_for_synthetic); for real data %s",
            _HOW_TO_SET,
        )
        return DEMO_KEY
    else:
        if synthetic:
            why = "deid.allow_demo_key_for_synthetic is false, so even synthetic data needs a key"
        else:
            why = "real (non-synthetic) data is never pseudonymised with the public demo key"
        raise IngestFailed(f"no de-identification key: {why}; {_HOW_TO_SET}")
    if len(key) < MIN_KEY_BYTES:
        raise IngestFailed(
            f"the de-identification key from {origin} has {len(key)} bytes; at least"
            f" {MIN_KEY_BYTES} are needed so pseudonyms cannot be reversed by guessing;"
            f" {_HOW_TO_SET}"
        )
    return key


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


# ------------------------------------------------------------------- clean descriptors

# Text a cleaned descriptor may not hold: e-mail addresses, phone numbers, dates, ID-like digit
# runs, a title before a name ("Dr Smith"), a person-name delimiter, a street address, a postcode.
_DIRTY = re.compile(
    r"""[\w.+-]+@[\w-]+\.\w
    | \+?\d[\d\s()./-]{5,}\d
    | \b\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b
    | \d{5,}
    | \b(?:DR|DOCTOR|MR|MRS|MS|MISS|PROF|PROFESSOR|NURSE|SISTER)\b\.?\s*[A-Z]
    | \^
    | \b\d+[A-Z]?\s+(?:[A-Z]+\s+){0,3}(?:STREET|ROAD|RD|AVENUE|AVE|LANE|DRIVE|BOULEVARD|BLVD
        |PLACE|COURT|SQUARE|CLOSE|CRESCENT|TERRACE|HIGHWAY|STRASSE|WEG|PLATZ|GASSE|RUE)\b
    | \b[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b
    """,
    re.IGNORECASE | re.VERBOSE,
)
_WORDS = re.compile(r"[^\W_]{3,}")


def _is_clean(text: str, identifying_words: set[str]) -> bool:
    """Whether a descriptor may be kept: nothing that looks identifying (_DIRTY), and no word
    of a value the profile removed or replaced in this file (names of anyone, IDs, places)."""
    if _DIRTY.search(text):
        return False
    return not any(word in identifying_words for word in _WORDS.findall(text.upper()))


# -------------------------------------------------------------------- de-identification


@dataclass
class _Pass:
    """The state of one dataset's de-identification."""

    shift_days: int
    written: set[str] = field(default_factory=set)  # values medflow wrote (not audited)
    identifying_words: set[str] = field(default_factory=set)  # for cleaning descriptors
    to_clean: list[tuple[Dataset, int]] = field(default_factory=list)


class Deidentifier:
    """Keyed, reproducible de-identification of DICOM datasets (in place).

    Every attribute of Table E.1-1 gets its action, also inside sequences and in the file
    meta; private elements are removed unless `profile.safe_private_tags` names them.
    PatientID and PatientName become the patient's keyed pseudonym, InstitutionName a
    site pseudonym, UIDs `2.25.<HMAC of the UID>` (the same UID maps to the same new UID
    in every file, run and process: references between files still match), dates move
    back by a per-patient number of days from the key (intervals within a patient kept).
    """

    def __init__(
        self, key: bytes, audit: PhiAudit | None = None, profile: Profile | None = None
    ) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"key has {len(key)} bytes, expected at least {MIN_KEY_BYTES}")
        self._key = bytes(key)
        self.audit = audit if audit is not None else PhiAudit()
        self.profile = profile or Profile()
        self._actions = _actions(self.profile)
        self._masked = masked_actions()
        self._safe = {
            (t.group, t.creator.strip().upper(), t.element) for t in self.profile.safe_private_tags
        }
        self._uids: dict[str, str] = {}
        # What the last deidentify() wrote itself: the audit does not search these values.
        self.written: frozenset[str] = frozenset()

    def patient_pseudonym(self, patient_id: str) -> str:
        """Stable pseudonym of an original PatientID: same key and ID, same pseudonym."""
        return "PSN-" + _hmac(self._key, "patient/" + patient_id.strip()).hex()[:16]

    def site_pseudonym(self, institution: str) -> str:
        """Stable pseudonym of an institution: keeps "which site" without naming it."""
        return "SITE-" + _hmac(self._key, "site/" + institution.strip()).hex()[:8]

    def uid(self, original: str) -> str:
        """The new UID of an original one: 2.25 (a UUID-derived root) and 128 bits of HMAC."""
        original = original.strip()
        new = self._uids.get(original)
        if new is None:
            if len(self._uids) >= 65536:  # bounded: a source can hold millions of UIDs
                self._uids.clear()
            digest = _hmac(self._key, "uid/" + original)[:16]
            new = self._uids[original] = f"2.25.{int.from_bytes(digest, 'big')}"
        return new

    def shift_days(self, patient_key: str) -> int:
        """Days this patient's dates move back: 1 to 10 years, from the key and the patient."""
        digest = _hmac(self._key, "date-shift/" + patient_key)
        return 365 + int.from_bytes(digest[:4], "big") % 3288

    def patient_key(self, ds: Dataset) -> str:
        """The original value a patient pseudonym is derived from.

        Without a PatientID the study stands in for the patient (then the SOP instance):
        such images cannot be grouped by patient, so each study is its own pseudo-patient.
        """
        fallbacks = (("PatientID", ""), ("StudyInstanceUID", "study:"), ("SOPInstanceUID", "sop:"))
        for keyword, prefix in fallbacks:
            value = str(ds.get(keyword, "") or "").strip()
            if value:
                return prefix + value
        return "unknown"

    def deidentify(self, ds: Dataset, *, collect: bool = True) -> Dataset:
        """De-identify ds in place by the profile and return it.

        The original values go to `audit` first, unless the caller collected them already
        (collect=False).
        """
        if collect:
            self.audit.collect(ds)
        patient_key = self.patient_key(ds)
        run = _Pass(self.shift_days(patient_key) if self.profile.retain_modified_dates else 0)
        pseudonym = self.patient_pseudonym(patient_key)
        institution = str(ds.get("InstitutionName", "") or "").strip()
        pseudonyms = {"PatientID": pseudonym, "PatientName": pseudonym}
        if institution:
            pseudonyms["InstitutionName"] = self.site_pseudonym(institution)

        self._apply(ds, run, pseudonyms)
        for keyword in ("PatientID", "PatientName"):  # also when the file has none
            if keyword not in ds:
                setattr(ds, keyword, pseudonym)
        run.written.add(pseudonym)
        file_meta = getattr(ds, "file_meta", None)
        if file_meta is not None:
            self._apply(file_meta, run, {})
            for keyword in _REMOVED_META_KEYWORDS:
                if keyword in file_meta:
                    delattr(file_meta, keyword)
        for parent, tag in run.to_clean:
            elem = parent[tag]
            if not all(_is_clean(v, run.identifying_words) for v in text_values(elem)):
                del parent[tag]
        if hasattr(ds, "preamble"):
            ds.preamble = None  # written as 128 zero bytes; the original's may hold anything
        self._record(ds, run)
        self.written = frozenset(run.written)
        return ds

    def _record(self, ds: Dataset, run: _Pass) -> None:
        """What was done, in the attributes PS3.15 E.1.1 names for it."""
        ds.PatientIdentityRemoved = "YES"
        existing = (
            ds.data_element("DeidentificationMethod") if "DeidentificationMethod" in ds else None
        )
        methods = text_values(existing) if existing is not None else []
        ds.DeidentificationMethod = [
            *dict.fromkeys([*methods, METHOD_CODES[BASIC_PROFILE], METHOD])
        ]
        for code in self.profile.method_codes():
            add_method_code(ds, code)
        modified = "MODIFIED" if self.profile.retain_modified_dates else "REMOVED"
        ds.LongitudinalTemporalInformationModified = modified
        run.written.update(text_values(ds.data_element("DeidentificationMethod")))
        run.written.update(METHOD_CODES.values())

    def _apply(self, ds: Dataset, run: _Pass, pseudonyms: dict[str, str]) -> None:
        """One walk over ds and its sequence items, each element getting its action."""
        creators: dict[tuple[int, int], str] | None = None
        for tag, elem in own_elements(ds):
            if tag.is_private:
                if creators is None:
                    creators = _private_creators(ds)
                if not self._is_safe_private(tag, creators):
                    del ds[tag]
                continue
            action = self._actions.get(tag)
            if action is None and ((tag >> 16) & 0xFF00) in (0x5000, 0x6000):
                action = _masked_action(self._masked, tag)
            vr = element_vr(elem)
            if vr == "UN" and action in (UID, SHIFT, CLEAN):
                action = REMOVE  # a value of unknown VR cannot be replaced in kind
            if action is None or action == KEEP:
                if vr == "SQ":
                    self._items(ds, tag, run)
                continue
            keyword = _PSEUDONYMISED.get(tag)
            if keyword is not None and keyword in pseudonyms:
                self._remember_words(ds, tag, vr, run)
                ds[tag] = DataElement(tag, vr, pseudonyms[keyword])
                run.written.add(pseudonyms[keyword])
                continue
            if action == CLEAN:
                if vr == "SQ":
                    self._items(ds, tag, run)
                else:
                    run.to_clean.append((ds, tag))
                continue
            if vr in _TEXT_VRS:
                self._remember_words(ds, tag, vr, run)
            if action == REMOVE:
                del ds[tag]
            elif action == EMPTY or (action == DUMMY and vr == "SQ"):
                # A dummy sequence would need dummy items: an empty one says as much.
                ds[tag] = DataElement(tag, vr, Sequence() if vr == "SQ" else _empty(vr))
            elif action == UID:
                self._replace_uids(ds, tag, vr, run)
            elif action == SHIFT:
                self._shift(ds, tag, vr, run)
            else:  # DUMMY
                dummy = _dummy(vr)
                ds[tag] = DataElement(tag, vr, dummy)
                run.written.add(str(dummy))

    def _items(self, ds: Dataset, tag: int, run: _Pass) -> None:
        value = ds[tag].value
        for item in value if isinstance(value, Sequence | list) else ():
            self._apply(item, run, {})

    def _is_safe_private(self, tag: int, creators: dict[tuple[int, int], str]) -> bool:
        if not self._safe:
            return False
        group, element = tag >> 16, tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:  # a private creator: kept when its block holds one
            creator = creators.get((group, element), "")
            return any(g == group and c == creator for g, c, _ in self._safe)
        creator = creators.get((group, element >> 8), "")
        return (group, creator, element & 0xFF) in self._safe

    def _remember_words(self, ds: Dataset, tag: int, vr: str, run: _Pass) -> None:
        """Words of a value the profile removes or replaces: a cleaned descriptor may not
        repeat them. Only needed when descriptors are cleaned."""
        if not self.profile.clean_descriptors or vr not in _TEXT_VRS:
            return
        for value in text_values(ds[tag]):
            run.identifying_words.update(_WORDS.findall(value.upper()))

    def _replace_uids(self, ds: Dataset, tag: int, vr: str, run: _Pass) -> None:
        elem = ds[tag]
        if vr != "UI":  # a sequence of references (U*): its UIDs get their own actions
            if vr == "SQ":
                self._items(ds, tag, run)
            else:
                del ds[tag]
            return
        new = [self.uid(v) for v in text_values(elem)]
        run.written.update(new)
        elem.value = new if len(new) > 1 else (new[0] if new else "")

    def _shift(self, ds: Dataset, tag: int, vr: str, run: _Pass) -> None:
        elem = ds[tag]
        if vr == "TM":
            return  # whole days move: times of day stay, and so do intervals
        shifted = [_shift_date(v, vr, run.shift_days) for v in text_values(elem)]
        values = [v for v in shifted if v]
        run.written.update(values)
        elem.value = values if len(values) > 1 else (values[0] if values else "")


def _masked_action(masked: list[tuple[int, int, int, int, str]], tag: int) -> str | None:
    group, element = tag >> 16, tag & 0xFFFF
    return next((a for g, e, gm, em, a in masked if group & gm == g and element & em == e), None)


def _private_creators(ds: Dataset) -> dict[tuple[int, int], str]:
    """(group, block) -> private creator, upper-cased, of ds's private blocks."""
    creators = {}
    for tag in ds.keys():
        if tag.is_private and 0x0010 <= tag.element <= 0x00FF:
            value = ds[tag].value
            creators[(tag.group, tag.element)] = str(value or "").strip().upper()
    return creators


def _shift_date(value: str, vr: str, days: int) -> str:
    """A DA or DT value `days` earlier; "" when it is not a full date (then it is removed)."""
    text = value.strip()
    if vr == "DA" and len(text) == 10 and text[4] == text[7] == ".":  # ACR-NEMA dates
        text = text.replace(".", "")
    digits = text[:8]
    if len(digits) < 8 or not digits.isdigit() or (vr == "DA" and len(text) != 8):
        return ""
    try:
        day = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8])) - timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    return f"{day.year:04d}{day.month:02d}{day.day:02d}" + text[8:]


def _empty(vr: str) -> object:
    return (
        b""
        if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN")
        else None
        if vr in _NUMERIC_VRS
        else ""
    )


def _dummy(vr: str) -> object:
    """A non-empty value of the VR that means nothing (the D action)."""
    if vr in _DUMMIES:
        return _DUMMIES[vr]
    if vr in _NUMERIC_VRS:
        return "0" if vr in ("DS", "IS") else 0
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return b"\x00\x00"
    if vr == "UI":
        return "2.25.0"
    return _DUMMY_TEXT
