"""DICOM Segmentation objects read into masks: which image frame each SEG frame paints.

A SEG frame paints one segment (BINARY: 0/1; FRACTIONAL: a fraction of MaximumFractional
Value, a pixel counting as in the segment from 0.5; LABELMAP: pixel value = segment number)
of the source frames its DerivationImageSequence / SourceImageSequence names (per frame, or
shared by all frames). Segments are matched to data.class_names[1:] by SegmentLabel, case
insensitive: segment k of a mask (0-based plane) is class_names[k + 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medflow.imaging.dicom import DicomError

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
SEG_CLASSES = frozenset({SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE})


class SegError(DicomError):
    """A SEG object that cannot become masks; the message names the problem and its fix."""


@dataclass(frozen=True)
class SegFrame:
    """One SEG frame: the plane it paints on one source frame."""

    source_sop: str  # ReferencedSOPInstanceUID
    source_frame: int | None  # ReferencedFrameNumber (1-based); None when not given
    plane: int  # 0-based mask plane: the segment's class index - 1
    pixels: np.ndarray  # (rows, columns) bool


@dataclass(frozen=True)
class DecodedSeg:
    rows: int
    columns: int
    frames: list[SegFrame]

    def referenced(self) -> list[str]:
        """The referenced SOP instance UIDs, each once, in order of appearance."""
        return list(dict.fromkeys(f.source_sop for f in self.frames))


def is_segmentation(ds: Dataset) -> bool:
    """Whether ds is a DICOM Segmentation (or Label Map Segmentation) object."""
    return str(ds.get("SOPClassUID", "")) in SEG_CLASSES


def segment_planes(ds: Dataset, class_names: list[str] | tuple[str, ...]) -> dict[int, int]:
    """SegmentNumber -> 0-based mask plane, by SegmentLabel matched to class_names[1:].

    Raises:
        SegError: no segments, or a segment whose label is not a (non-background) class name.
    """
    index = {name.strip().lower(): i for i, name in enumerate(class_names)}
    planes: dict[int, int] = {}
    unknown: list[str] = []
    for item in ds.get("SegmentSequence", []) or []:
        label = str(item.get("SegmentLabel", "") or "").strip()
        klass = index.get(label.lower(), 0)
        if klass == 0:
            unknown.append(label)
            continue
        planes[int(item.SegmentNumber)] = klass - 1
    if unknown:
        raise SegError(
            f"SEG segment label: segment(s) labelled {sorted(set(unknown))} match no class of"
            f" data.class_names {list(class_names[1:])} (the first, {class_names[0]!r}, is the"
            " background); rename the segments or add the classes"
        )
    if not planes:
        raise SegError("SEG without segments: its SegmentSequence is empty or missing")
    return planes


def _sources(group: Dataset | None) -> list[tuple[str, int | None]]:
    """(ReferencedSOPInstanceUID, ReferencedFrameNumber) of a functional group's derivation."""
    found: list[tuple[str, int | None]] = []
    if group is None:
        return found
    for derivation in group.get("DerivationImageSequence", []) or []:
        for source in derivation.get("SourceImageSequence", []) or []:
            sop = str(source.get("ReferencedSOPInstanceUID", "") or "").strip()
            if not sop:
                continue
            numbers = source.get("ReferencedFrameNumber")
            if numbers is None or numbers == "":
                found.append((sop, None))
                continue
            values = list(numbers) if isinstance(numbers, MultiValue | list | tuple) else [numbers]
            found += [(sop, int(n)) for n in values]
    return found


def _series_instances(ds: Dataset) -> list[str]:
    return [
        str(item.ReferencedSOPInstanceUID)
        for series in ds.get("ReferencedSeriesSequence", []) or []
        for item in series.get("ReferencedInstanceSequence", []) or []
        if "ReferencedSOPInstanceUID" in item
    ]


def _first(sequence: object) -> Dataset | None:
    return sequence[0] if sequence else None  # type: ignore[index]


def decode_seg(ds: Dataset, class_names: list[str] | tuple[str, ...]) -> DecodedSeg:
    """The frames of a SEG object as binary planes on the source frames they reference.

    Raises:
        SegError: unknown segment labels, frames that name no source image, an unknown
            segmentation type, or pixel data that does not decode.
    """
    planes = segment_planes(ds, class_names)
    kind = str(ds.get("SegmentationType", "") or "").strip().upper()
    if kind not in ("BINARY", "FRACTIONAL", "LABELMAP"):
        raise SegError(
            f"SEG segmentation type {kind or 'missing'!r}: expected BINARY, FRACTIONAL or LABELMAP"
        )
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise SegError(f"SEG pixel data does not decode: {type(exc).__name__}: {exc}") from exc
    if pixels.ndim == 2:
        pixels = pixels[None]
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if pixels.shape != (n, rows, columns):
        raise SegError(
            f"SEG pixel data has shape {pixels.shape}, expected ({n}, {rows}, {columns})"
        )
    shared = _first(ds.get("SharedFunctionalGroupsSequence"))
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []) or [])
    fallback = _sources(shared)
    if not fallback:
        instances = list(dict.fromkeys(_series_instances(ds)))
        fallback = [(instances[0], None)] if len(instances) == 1 else []
    out: list[SegFrame] = []
    for i in range(n):
        group = per_frame[i] if i < len(per_frame) else None
        sources = _sources(group) or fallback
        if not sources:
            raise SegError(
                f"SEG frame {i + 1} names no source image (no DerivationImageSequence /"
                " SourceImageSequence ReferencedSOPInstanceUID): it cannot be paired"
            )
        for plane, painted in _painted(ds, kind, pixels[i], group, shared, planes, i):
            out += [SegFrame(sop, number, plane, painted) for sop, number in sources]
    return DecodedSeg(rows, columns, out)


def _painted(
    ds: Dataset,
    kind: str,
    frame: np.ndarray,
    group: Dataset | None,
    shared: Dataset | None,
    planes: dict[int, int],
    i: int,
) -> list[tuple[int, np.ndarray]]:
    """(plane, bool pixels) one SEG frame paints."""
    if kind == "LABELMAP":
        return [(plane, frame == number) for number, plane in planes.items()]
    ident = _first((group or Dataset()).get("SegmentIdentificationSequence")) or _first(
        (shared or Dataset()).get("SegmentIdentificationSequence")
    )
    if ident is None or "ReferencedSegmentNumber" not in ident:
        raise SegError(f"SEG frame {i + 1} names no segment (SegmentIdentificationSequence)")
    number = int(ident.ReferencedSegmentNumber)
    if number not in planes:
        raise SegError(f"SEG frame {i + 1} paints segment {number}, which SegmentSequence lacks")
    if kind == "FRACTIONAL":
        top = int(ds.get("MaximumFractionalValue", 255) or 255)
        return [(planes[number], frame.astype(np.float64) * 2 >= top)]
    return [(planes[number], frame > 0)]
