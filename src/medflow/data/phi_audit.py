"""The PHI audit: remember a file's original identifying values, then look for them in outputs.

`PhiAudit.collect` remembers one original dataset's values; `kinds_in_dataset` searches a
de-identified dataset before it is written, `scan` searches written files byte by byte.
Findings name the *kind* of identifier and where it was found, never the value.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

# Attributes whose original values the audit looks for in every output (at any depth).
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
_AUDITED_TAGS = {pydicom.datadict.tag_for_keyword(k): k for k in AUDITED_KEYWORDS}
# Codes of a coding scheme, coded strings like CS: a designator TEST is no patient Test.
_CODED_TAGS = frozenset(
    pydicom.datadict.tag_for_keyword(k)
    for k in (
        "CodeValue",
        "LongCodeValue",
        "URNCodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "ContextIdentifier",
        "MappingResource",
    )
)


def text_values(elem: DataElement) -> list[str]:
    """The non-empty values of an element, as stripped strings."""
    value = elem.value
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(v).strip() for v in values if v is not None and str(v).strip()]


def element_vr(elem: DataElement | RawDataElement) -> str:
    """The VR of an element without converting a raw one (implicit VR: the dictionary's)."""
    return str(elem.VR) if elem.VR else dictionary_vr(elem.tag)


@cache
def dictionary_vr(tag: int) -> str:
    """The data dictionary's VR of a tag; UN for private and unknown ones."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def own_elements(ds: Dataset) -> list[tuple[int, DataElement | RawDataElement]]:
    """(tag, element) of ds's own elements in ds.keys() order, raw ones not converted (as
    ds.get_item gives them, without its cost per tag); a deferred value is read."""
    return [
        (tag, ds[tag] if elem.value is None and isinstance(elem, RawDataElement) else elem)
        for tag, elem in list(ds._dict.items())
    ]


# A value is found only as a whole "word": not directly preceded or followed by a letter,
# digit, dot or underscore. Otherwise short IDs would be "found" inside every UID or number.
_WORD = rb"[A-Z0-9._]+"
_RUN = re.compile(_WORD)
_WORD_BYTE = re.compile(rb"[A-Z0-9._]")
_SIMPLE = re.compile(rb"^" + _WORD + rb"$")
_MIN_LEN = 3  # shorter values cannot be told from ordinary header content
_MIN_DIGITS = 5  # purely numeric values: shorter ones coincide with sizes, counts, ...
_MIN_LEN_IN_PIXELS = 8  # pixel bytes are noise-like: only long values are meaningful there
_PIXEL_SLICE = 1 << 24  # bytes of pixel data upper-cased at a time
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
        """Remember the identifying values of one original dataset (sequences included)."""
        manufacturer = str(ds.get("Manufacturer", "") or "").strip().upper()
        if len(manufacturer) >= _MIN_LEN:
            for encoding in ("utf-8", "latin-1"):
                try:
                    self._vendors.add(manufacturer.encode(encoding))
                except UnicodeEncodeError:
                    continue
        for parent, tag, raw in _elements(ds):
            keyword = _AUDITED_TAGS.get(tag)
            if keyword is None and element_vr(raw) != "PN":
                continue
            elem = parent[tag]
            if keyword is None:  # another person's name: the whole name
                for value in text_values(elem):
                    self.add(elem.keyword or "person name", value)
                continue
            for value in text_values(elem):
                if keyword == "InstitutionName" and value.upper() in manufacturer:
                    continue  # vendor test data name the vendor as institution: not a place
                self.add(keyword, value)
                if elem.VR == "PN":
                    for part in re.split(r"[\^=]", value):
                        self.add(keyword + _PART, part)

    def kinds_in_dataset(self, ds: Dataset, written: Iterable[str] = ()) -> dict[str, set[str]]:
        """Kinds of remembered identifier in a de-identified dataset, by the attribute that
        holds them: {"ImageComments": {"PatientName component"}, ...}; empty when clean.

        Searched: every value of the dataset and its file meta, at any depth, as stored
        (raw bytes stay unconverted). Not searched: coded strings (CS: ImageType PERFUSION
        is no name even when a patient is called Perfusion; the code values and coding scheme
        designators of code sequence items) and the values in `written`
        (pseudonyms, new UIDs, shifted dates: the de-identification's own output). Pixel
        Data and other long binary values are searched for long values only (see scan).
        """
        skip = set(written)
        texts: list[tuple[str, bytes]] = []
        binaries: list[tuple[str, bytes]] = []
        meta = getattr(ds, "file_meta", None)
        for dataset in (meta, ds) if meta is not None else (ds,):
            for _, tag, elem in _elements(dataset):
                vr = element_vr(elem)
                if vr in ("CS", "SQ") or tag in _CODED_TAGS:
                    continue
                name = _name(tag)
                value = elem.value
                if isinstance(value, bytes):
                    if vr in _BINARY_VRS and len(value) > _MAX_SHORT_BINARY:
                        binaries.append((name, value))
                    else:
                        texts.append((name, value))
                    continue
                strings = text_values(elem)
                kept = [v for v in strings if v not in skip]
                if kept:
                    texts.append((name, "\\".join(kept).encode("utf-8", "replace")))
        blob = b"\x00".join(v for _, v in texts)
        if not self._kinds_in(blob) and not any(self._kinds_in(b"", v) for _, v in binaries):
            return {}  # the usual case: one search of all text, one of each binary value
        found: dict[str, set[str]] = {}
        for name, value in texts:
            kinds = self._kinds_in(value)
            if kinds:
                found.setdefault(name, set()).update(kinds)
        for name, value in binaries:
            kinds = self._kinds_in(b"", value)
            if kinds:
                found.setdefault(name, set()).update(kinds)
        return found

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
            # Most tokens (UIDs, IDs with digits) are found by a part without letters, which
            # upper-casing leaves alone: searched in the bytes as they are, no copy.
            found, to_upper = _words_in_bytes(pixels, long_tokens)
            for token in found:
                kinds |= self._kinds_of(self._simple, token)
            if to_upper:
                # In slices: a long cine's pixel data is not copied whole (upper() copies).
                view, overlap = memoryview(pixels), max(map(len, to_upper))
                for start in range(0, len(view), _PIXEL_SLICE):
                    # one byte before the slice: whether a match there starts a word
                    upper = bytes(view[max(0, start - 1) : start + _PIXEL_SLICE + overlap]).upper()
                    for token in to_upper:
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


_NOT_LETTERS = re.compile(rb"[^A-Z]+")
_WORD_BYTE_ANYCASE = re.compile(rb"[A-Za-z0-9._]")
_MIN_ANCHOR = 4  # bytes of a token's letter-free part worth searching for on its own


def _words_in_bytes(text: bytes, tokens: Iterable[bytes]) -> tuple[set[bytes], list[bytes]]:
    """The tokens _contains_word(text.upper(), token) finds, without upper-casing text.

    A token is looked for by its longest part without letters (upper() leaves those bytes as
    they are; the whole of a UID), once for all tokens sharing it; each hit is then compared
    in full. Returns (found, tokens without such a part of _MIN_ANCHOR bytes, which the
    caller searches in upper-cased text). Why: docs/decisions/ingest-speed.md.
    """
    by_key: dict[bytes, dict[bytes, int]] = {}  # key -> {token: where the key starts in it}
    no_key = []
    for token in tokens:
        parts = _NOT_LETTERS.findall(token)
        anchor = max(parts, key=len) if parts else b""
        if len(anchor) < _MIN_ANCHOR:
            no_key.append(token)
            continue
        by_key.setdefault(anchor, {})[token] = token.find(anchor)
    found = set()
    for key, left in by_key.items():
        hit = text.find(key)
        while hit >= 0 and left:
            for token, offset in list(left.items()):
                start, end = hit - offset, hit - offset + len(token)
                if start < 0 or text[start:end].upper() != token:
                    continue
                before = text[start - 1 : start] if start else b""
                after = text[end : end + 1]
                if not (before and _WORD_BYTE_ANYCASE.match(before)) and not (
                    after and _WORD_BYTE_ANYCASE.match(after)
                ):
                    found.add(token)
                    del left[token]
            hit = text.find(key, hit + 1)
    return found, no_key


# Binary values longer than this are searched like pixel data (long values only): LUTs,
# ICC profiles and the like are noise-like, short values would be "found" by chance.
_MAX_SHORT_BINARY = 256
_BINARY_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN", "OB or OW", "US or OW"})


@cache
def _name(tag: int) -> str:
    """An attribute's keyword, or its tag for private and unknown ones."""
    keyword = pydicom.datadict.keyword_for_tag(tag)
    return keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _elements(ds: Dataset) -> Iterable[tuple[Dataset, int, DataElement | RawDataElement]]:
    """(parent dataset, tag, element) of every element at any depth, sequence items after
    their sequence; raw elements are not converted, except sequences (to reach the items)."""
    for tag, elem in own_elements(ds):
        yield ds, tag, elem
        if element_vr(elem) == "SQ":
            value = ds[tag].value
            if isinstance(value, Sequence | list):
                for item in value:
                    yield from _elements(item)
