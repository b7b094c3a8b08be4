"""De-identification: keyed pseudonyms, dicognito, and an audit of every output byte.

`resolve_deid_key` is the only reader of the key's environment variables and is called by
the entry points (CLI, Prefect flow), never by a stage. `Deidentifier` turns one key into
stable pseudonyms: the same key gives the same patient pseudonyms, UIDs and date shifts on
every run, so re-ingesting a dataset reproduces it. `PhiAudit` remembers the original
identifying values and searches output files for them; it reports which *kind* of
identifier leaked and where, never the value.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
from dicognito.anonymizer import Anonymizer
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medflow.errors import IngestFailed

logger = logging.getLogger(__name__)

KEY_ENV = "MEDFLOW_DEID_KEY"
KEY_FILE_ENV = "MEDFLOW_DEID_KEY_FILE"
MIN_KEY_BYTES = 16
# Public on purpose: it protects nothing and is only accepted for synthetic data.
DEMO_KEY = b"medflow-public-demo-key-for-synthetic-data-only"
METHOD = "MEDFLOW KEYED HMAC-SHA256 PSEUDONYMS"

_HOW_TO_SET = (
    f"set {KEY_ENV} to a secret of at least {MIN_KEY_BYTES} characters"
    f" (e.g. `export {KEY_ENV}=$(openssl rand -hex 32)`), or put it in a file readable only"
    f" by you and set {KEY_FILE_ENV} to that file's path. Keep the key out of the repository"
    " and store it safely: the same key is needed to reproduce the same pseudonyms"
)

# Attributes whose original values the audit looks for in every output file.
AUDITED_KEYWORDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)
# Removed after dicognito: not needed for modelling, and dicognito would only replace them
# with realistic-looking values that could coincide with someone's real data.
_REMOVED_KEYWORDS = (
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
)
_REMOVED_META_KEYWORDS = (
    "SourceApplicationEntityTitle",
    "SendingApplicationEntityTitle",
    "ReceivingApplicationEntityTitle",
    "PrivateInformationCreatorUID",
    "PrivateInformation",
)


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


def _hmac_hex(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()


def _text_values(elem: DataElement) -> list[str]:
    value = elem.value
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(v).strip() for v in values if v is not None and str(v).strip()]


# ---------------------------------------------------------------------------------- audit

# A value is found only as a whole "word": not directly preceded or followed by a letter,
# digit, dot or underscore. Otherwise short IDs would be "found" inside every UID or number.
_WORD = rb"[A-Z0-9._]+"
_RUN = re.compile(_WORD)
_WORD_BYTE = re.compile(rb"[A-Z0-9._]")
_SIMPLE = re.compile(rb"^" + _WORD + rb"$")
_MIN_LEN = 3  # shorter values cannot be told from ordinary header content
_MIN_DIGITS = 5  # purely numeric values: shorter ones coincide with sizes, counts, ...
_MIN_LEN_IN_PIXELS = 8  # pixel bytes are noise-like: only long values are meaningful there
_PART = " component"  # the kind of a part of a person name: "PatientName component"


_NONE: frozenset[str] = frozenset()
_KINDS: dict[frozenset[str], frozenset[str]] = {}


def _kinds(kinds: frozenset[str]) -> frozenset[str]:
    """One shared frozenset per distinct set of kinds (there are few)."""
    return _KINDS.setdefault(kinds, kinds)


@dataclass(frozen=True)
class Finding:
    """An identifier of `kind` (a DICOM keyword) found in `file`. The value is never kept."""

    file: Path
    kind: str

    def __str__(self) -> str:
        return f"{self.file}: original {self.kind} value"


def _pixel_data_span(data: bytes) -> tuple[int, int] | None:
    """Byte range of the Pixel Data value in a Part-10 file, or None."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), defer_size=256)
        raw = ds.get_item(0x7FE00010, keep_deferred=True)
    except Exception:
        return None
    start = getattr(raw, "value_tell", None)
    if raw is None or start is None:
        return None
    if raw.length != 0xFFFFFFFF:
        return start, start + raw.length
    # Encapsulated: walk the items up to the sequence delimiter (little endian only).
    pos = start
    while pos + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        pos += length
    return start, min(pos, len(data))


class PhiAudit:
    """Original identifying values, and a search for them in output files."""

    def __init__(self) -> None:
        # Kinds are shared frozensets (_kinds): a set per value would cost more memory than
        # the value itself, and an ingest holds the values of every file.
        self._simple: dict[bytes, frozenset[str]] = {}  # value that is one whole word -> kinds
        self._complex: dict[bytes, frozenset[str]] = {}  # value with spaces, ^, ... -> kinds
        # Complex values by their longest word: a file is searched only for the values
        # whose longest word it contains, so the scan stays fast with many patients.
        self._complex_by_word: dict[bytes, set[bytes]] = {}
        # Manufacturer names: vendor test data often name the vendor as the institution,
        # and a vendor's name in the manifest's manufacturer column is not a place.
        self._vendors: set[bytes] = set()
        self._vocabulary: set[bytes] = set()  # words the outputs hold by design
        self.n_unscannable = 0  # values too short to search for reliably

    def __len__(self) -> int:
        return len(self._simple) + len(self._complex)

    def merge(self, other: PhiAudit) -> None:
        """Add the values another audit remembered (e.g. a worker's, for one shard)."""
        for mine, theirs in ((self._simple, other._simple), (self._complex, other._complex)):
            for token, kinds in theirs.items():
                mine[token] = _kinds(mine.get(token, _NONE) | kinds)
        for word, tokens in other._complex_by_word.items():
            self._complex_by_word.setdefault(word, set()).update(tokens)
        self._vendors |= other._vendors
        self.n_unscannable += other.n_unscannable

    def add(self, kind: str, value: str) -> None:
        """Remember one original value of the identifier `kind`."""
        value = value.strip().strip("^=").strip()
        if len(value) < _MIN_LEN or (value.isdigit() and len(value) < _MIN_DIGITS):
            if value:
                self.n_unscannable += 1
            return
        # Files are compared after an ASCII upper-casing; non-ASCII letters keep their case.
        tokens = set()
        for variant in (value, value.upper()):
            for encoding in ("utf-8", "latin-1"):
                try:
                    tokens.add(variant.encode(encoding).upper())
                except UnicodeEncodeError:
                    continue
        for token in tokens:
            if _SIMPLE.match(token):
                self._simple[token] = _kinds(self._simple.get(token, _NONE) | {kind})
            else:
                self._complex[token] = _kinds(self._complex.get(token, _NONE) | {kind})
                words = _RUN.findall(token)
                anchor = max(words, key=len) if words else b""
                self._complex_by_word.setdefault(anchor, set()).add(token)

    def collect(self, ds: Dataset) -> None:
        """Remember the identifying values of one original dataset."""
        manufacturer = str(ds.get("Manufacturer", "") or "").strip().upper()
        if len(manufacturer) >= _MIN_LEN:
            for encoding in ("utf-8", "latin-1"):
                try:
                    self._vendors.add(manufacturer.encode(encoding))
                except UnicodeEncodeError:
                    continue
        for keyword in AUDITED_KEYWORDS:
            elem = ds.data_element(keyword) if keyword in ds else None
            if elem is None:
                continue
            for value in _text_values(elem):
                if keyword == "InstitutionName" and value.upper() in manufacturer:
                    continue  # vendor test data name the vendor as institution: not a place
                self.add(keyword, value)
                if elem.VR == "PN":
                    for part in re.split(r"[\^=]", value):
                        self.add(keyword + _PART, part)

        def visit(_: Dataset, elem: DataElement) -> None:
            # Person names anywhere, including inside sequences.
            if elem.VR == "PN" and elem.keyword not in AUDITED_KEYWORDS:
                for value in _text_values(elem):
                    self.add(elem.keyword or "person name", value)

        ds.walk(visit)

    def allow_vocabulary(self, words: Iterable[str]) -> int:
        """Words the scanned outputs contain by design (split and class names, column
        headers...): a patient called "Test" cannot be told from the split "test", so such
        values are not searched for. Returns how many remembered values this excludes."""
        self._vocabulary = {w.strip().upper().encode("utf-8") for w in words if w.strip()}
        return sum(1 for t in [*self._simple, *self._complex] if t in self._vocabulary)

    def _kinds_of(self, table: dict[bytes, frozenset[str]], token: bytes) -> frozenset[str]:
        if token in self._vocabulary:
            return _NONE
        kinds = table[token]
        if token in self._vendors and "InstitutionName" in kinds:
            return kinds - {"InstitutionName"}
        return kinds

    def _kinds_in(self, text: bytes, pixels: bytes = b"") -> set[str]:
        text = text.upper()
        words = set(_RUN.findall(text))
        kinds: set[str] = set()
        for word in words & self._simple.keys():
            kinds |= self._kinds_of(self._simple, word)
        candidates = set(self._complex_by_word.get(b"", ()))
        for word in words & self._complex_by_word.keys():
            candidates |= self._complex_by_word[word]
        for token in candidates:
            if _contains_word(text, token):
                kinds |= self._kinds_of(self._complex, token)
        if pixels:
            long_tokens = [t for t in self._simple if len(t) >= _MIN_LEN_IN_PIXELS]
            if long_tokens:
                upper = pixels.upper()
                for token in long_tokens:
                    if _contains_word(upper, token):
                        kinds |= self._kinds_of(self._simple, token)
        return kinds

    def kinds_in_text(self, text: str, *, whole_values_only: bool = False) -> set[str]:
        """Kinds of identifier present in a string (e.g. a source path before it is written).

        whole_values_only leaves out the parts of person names ("First", "Test"): across
        many patients, one of them is bound to share a part with an ordinary word.
        """
        kinds = self._kinds_in(text.encode("utf-8"))
        if whole_values_only:
            return {k for k in kinds if not k.endswith(_PART)}
        return kinds

    def kinds_in_dicom(self, header: bytes, pixels: bytes) -> set[str]:
        """Kinds of identifier in a DICOM file, given as its bytes without the pixel data
        (searched for every value) and its pixel data (searched for long values only)."""
        return self._kinds_in(header, pixels)

    def scan(self, paths: Iterable[Path], *, whole_values_only: bool = False) -> list[Finding]:
        """Search every file's bytes for the remembered values (see kinds_in_text).

        In DICOM files the pixel data is searched for long values only (short ones occur by
        chance in pixel bytes); text burned into the image itself is not detected.
        """
        findings: list[Finding] = []
        for path in paths:
            with open(path, "rb") as fh:
                is_dicom = fh.read(132)[128:132] == b"DICM"
            kinds: set[str] = set()
            if is_dicom:
                data = Path(path).read_bytes()
                pixels = b""
                span = _pixel_data_span(data)
                if span is not None:
                    pixels = data[span[0] : span[1]]
                    data = data[: span[0]] + b"\x00" + data[span[1] :]
                kinds = self._kinds_in(data, pixels)
            else:  # text (manifest, reports, logs): in blocks of whole lines, memory flat
                with open(path, "rb") as fh:
                    for lines in iter(lambda fh=fh: fh.readlines(1 << 20), []):
                        kinds |= self._kinds_in(b"".join(lines))
            if whole_values_only:
                kinds = {k for k in kinds if not k.endswith(_PART)}
            findings += [Finding(Path(path), kind) for kind in sorted(kinds)]
        return findings


def _contains_word(text: bytes, token: bytes) -> bool:
    """Whether token occurs in text as a whole word (see _WORD); both upper-cased."""
    start = text.find(token)
    while start >= 0:
        end = start + len(token)
        before = text[start - 1 : start] if start else b""
        after = text[end : end + 1]
        if not (before and _WORD_BYTE.match(before)) and not (after and _WORD_BYTE.match(after)):
            return True
        start = text.find(token, start + 1)
    return False


# ----------------------------------------------------------------------- de-identification


class Deidentifier:
    """Keyed, reproducible de-identification of DICOM datasets (in place).

    Pseudonyms are HMAC-SHA256 of the original values under the key; dicognito, seeded from
    the key, replaces UIDs, IDs, names, addresses and shifts dates consistently. Every
    original identifying value is remembered in `audit` for the output scan.
    """

    def __init__(self, key: bytes, audit: PhiAudit | None = None) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"key has {len(key)} bytes, expected at least {MIN_KEY_BYTES}")
        self._key = bytes(key)
        self.audit = audit if audit is not None else PhiAudit()
        self._anonymizers: dict[str, Anonymizer] = {}

    def _anonymizer_for(self, patient_key: str) -> Anonymizer:
        """dicognito seeded per patient: each patient's dates move by their own offset.

        A single offset for everyone would let one known date (a birthday, a scan the
        patient remembers) undo the shift of every patient's dates.
        """
        anonymizer = self._anonymizers.get(patient_key)
        if anonymizer is None:
            if len(self._anonymizers) >= 4096:  # bounded: sources can hold millions of patients
                self._anonymizers.clear()
            seed = _hmac_hex(self._key, "medflow/dicognito-seed/" + patient_key)
            anonymizer = self._anonymizers[patient_key] = Anonymizer(seed=seed)
        return anonymizer

    def patient_pseudonym(self, patient_id: str) -> str:
        """Stable pseudonym of an original PatientID: same key and ID, same pseudonym."""
        return "PSN-" + _hmac_hex(self._key, "patient/" + patient_id.strip())[:16]

    def site_pseudonym(self, institution: str) -> str:
        """Stable pseudonym of an institution: keeps "which site" without naming it."""
        return "SITE-" + _hmac_hex(self._key, "site/" + institution.strip())[:8]

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
        """Remove or replace identifying attributes of ds in place and return it.

        The original values go to `audit` first, unless the caller collected them already
        (collect=False).
        """
        if collect:
            self.audit.collect(ds)
        patient_key = self.patient_key(ds)
        pseudonym = self.patient_pseudonym(patient_key)
        institution = str(ds.get("InstitutionName", "") or "").strip()

        ds.remove_private_tags()
        self._anonymizer_for(patient_key).anonymize(ds)

        def clear_names(_: Dataset, elem: DataElement) -> None:
            # dicognito swaps names for realistic fake ones; nobody's name is needed at all.
            if elem.VR == "PN" and elem.value:
                elem.value = ""

        ds.walk(clear_names)
        for keyword in _REMOVED_KEYWORDS:
            if keyword in ds:
                delattr(ds, keyword)
        file_meta = getattr(ds, "file_meta", None)
        if file_meta is not None:
            for keyword in _REMOVED_META_KEYWORDS:
                if keyword in file_meta:
                    delattr(file_meta, keyword)
        ds.PatientID = pseudonym
        ds.PatientName = pseudonym
        if "PatientBirthDate" in ds:
            ds.PatientBirthDate = ""  # shifted dates stay; a birth date is not needed
        if institution:
            ds.InstitutionName = self.site_pseudonym(institution)
        elif "InstitutionName" in ds:
            ds.InstitutionName = ""  # dicognito invents a clinic name; none is better
        ds.PatientIdentityRemoved = "YES"
        existing = (
            ds.data_element("DeidentificationMethod") if "DeidentificationMethod" in ds else None
        )
        methods = _text_values(existing) if existing is not None else []
        ds.DeidentificationMethod = [*dict.fromkeys([*methods, METHOD])]
        return ds
