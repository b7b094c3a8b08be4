"""The unit of ingest work: one shard of source files, read, checked, de-identified, written.

`ingest_shard` is a plain, picklable function of a `ShardTask`: it runs here, in a process
pool or on a Dask cluster. Each image is audited here for its own file's identifiers. The
result holds original identifying values (in `audit`): never persist or log a ShardResult.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medflow.config import BurnedInTextParams
from medflow.data import manifest
from medflow.data.burned_in import screen
from medflow.data.deid import CLEAN_PIXEL_DATA, Deidentifier, PhiAudit, Profile, add_method_code
from medflow.data.seg_objects import decode_seg, is_segmentation
from medflow.errors import StageFailed
from medflow.imaging.dicom import DicomError, NotAnImage, check_image, read_dicom
from medflow.imaging.pixels import decode_frame, frame_indices, luminance, n_frames, photometric

IMAGES_DIR = "images"
SEGMENTATIONS_DIR = "segmentations"  # de-identified SEG objects (data.task: segmentation)
SEGMENTATION = "segmentation"
NO_LABEL = "no label"

QUARANTINED, SKIPPED, DUPLICATE = "quarantined", "skipped", "duplicate"
PHI_AUDIT = "PHI audit"  # the reason's prefix and category of files the audit quarantined


@dataclass(frozen=True)
class ShardSettings:
    """Everything, besides the key, that decides what a file turns into."""

    class_names: tuple[str, ...]
    frames: str
    max_frame_pixels: int
    allow_burned_in_annotation: bool
    deid: Profile = Profile()  # the confidentiality profile's options
    burned_in_text: BurnedInTextParams = field(default_factory=BurnedInTextParams)
    task: str = "classification"  # segmentation: SEG objects are read, not skipped


@dataclass(frozen=True)
class ShardTask:
    """One shard's work: which files, where to write, the key and the settings."""

    source: str  # the source folder
    out_dir: str  # the (temporary) output folder; images go to out_dir/images
    files: tuple[tuple[str, int | None], ...]  # (path relative to source, label or None)
    key: bytes
    settings: ShardSettings


@dataclass(frozen=True)
class Outcome:
    """A file that did not become manifest rows, and why."""

    path: str  # relative to the source
    sha256: str
    outcome: str  # quarantined | skipped | duplicate
    reason: str
    category: str  # short and value-free: what the logs count
    # Kinds of its own file's identifiers the path holds (a folder named after the
    # patient): the path is withheld from the quarantine report.
    path_kinds: tuple[str, ...] = ()


@dataclass
class ShardResult:
    """What a shard produced: manifest rows, outcomes, hashes and the audit's originals."""

    rows: list[dict[str, object]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)  # path -> sha256 of its bytes
    audit: PhiAudit = field(default_factory=PhiAudit)
    files_scanned: int = 0
    without_patient_id: int = 0
    text_redacted: int = 0  # images whose burned-in text was filled (burned_in.screen)
    # de-identified SEG objects written (segmentation): path, content_hash, file and the
    # pseudonymous ids; paired with the images after all shards (medflow.data.pairing)
    segs: list[dict[str, object]] = field(default_factory=list)


@dataclass(frozen=True)
class _Ingested:
    rows: list[dict[str, object]]
    had_patient_id: bool
    text_redacted: bool = False
    seg: dict[str, object] | None = None


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings and log lines quote values (names, UIDs): keep them out of logs."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    pydicom_logger = logging.getLogger("pydicom")
    saved_level = pydicom_logger.level
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    pydicom_logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved
        pydicom_logger.setLevel(saved_level)


def ingest_shard(task: ShardTask) -> ShardResult:
    """Ingest the files of one shard; never raises for a bad file (it becomes an Outcome)."""
    deid = Deidentifier(task.key, profile=task.settings.deid)
    result = ShardResult(audit=deid.audit)
    source, out_dir = Path(task.source), Path(task.out_dir)
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    if task.settings.task == SEGMENTATION:
        (out_dir / SEGMENTATIONS_DIR).mkdir(parents=True, exist_ok=True)
    scratch = _Scratch()
    with quiet_pydicom():
        for rel, label in task.files:
            sha = ""
            # The identifiers of this file only: its output is searched for them (another
            # file's values, a vendor name say, may rightly appear in this one).
            originals = PhiAudit()
            try:
                data = (source / rel).read_bytes()  # inputs are only ever read
                sha = hashlib.sha256(data).hexdigest()
                result.hashes[rel] = sha
                if label is None:
                    _collect_quietly(data, originals)  # its identifiers may appear in paths
                    result.outcomes.append(Outcome(rel, sha, QUARANTINED, NO_LABEL, NO_LABEL))
                    continue
                done = _ingest_file(
                    data, sha, label, task.settings, deid, originals, out_dir, scratch
                )
                result.without_patient_id += not done.had_patient_id
                result.text_redacted += done.text_redacted
                result.rows += done.rows
                if done.seg is not None:
                    result.segs.append({"path": rel, **done.seg})
                result.files_scanned += 1
            except StageFailed:
                raise  # the run cannot go on (tesseract missing): not one bad file
            except NotAnImage as exc:
                result.outcomes.append(Outcome(rel, sha, SKIPPED, str(exc), "not an image"))
            except DicomError as exc:
                category = re.split(r"[:(;]", str(exc))[0].strip()
                result.outcomes.append(Outcome(rel, sha, QUARANTINED, str(exc), category))
            except Exception as exc:  # one bad file must not stop the run
                reason = f"unexpected {type(exc).__name__}: {exc}"
                category = f"unexpected {type(exc).__name__}"
                result.outcomes.append(Outcome(rel, sha, QUARANTINED, reason, category))
            finally:
                result.audit.merge(originals)
                if result.outcomes and result.outcomes[-1].path == rel:
                    kinds = tuple(sorted(originals.kinds_in_text(rel)))
                    if kinds:
                        result.outcomes[-1] = replace(result.outcomes[-1], path_kinds=kinds)
    return result


def _ingest_file(
    data: bytes,
    sha: str,
    label: int,
    settings: ShardSettings,
    deid: Deidentifier,
    originals: PhiAudit,
    out_dir: Path,
    scratch: _Scratch,
) -> _Ingested:
    """Rows of one file, whose de-identified copy is written to out_dir/images/<sha>.dcm.

    The de-identified dataset is searched for the file's original identifiers first; if
    any is left, the file is quarantined (PHI_AUDIT, naming the kinds and attributes, never
    the values) and nothing is written.
    """
    ds = read_dicom(data)
    # Remember the originals first: if the file fails below, its path and reason are
    # written to the quarantine report, which must not leak them either.
    originals.collect(ds)
    if settings.task == SEGMENTATION and is_segmentation(ds):
        return _ingest_seg(ds, sha, settings, deid, originals, out_dir)
    check_image(ds, settings.max_frame_pixels)
    burned_in = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned_in == "YES" and not settings.allow_burned_in_annotation:
        raise DicomError(
            "burned-in annotation: BurnedInAnnotation is YES, the pixels may show identifying"
            " text that header de-identification cannot remove; mask it upstream, or set"
            " deid.allow_burned_in_annotation if this source is known to be clean"
        )
    # OCR of the pixels: quarantines the file, or redacts the text before the stats below
    redacted = screen(ds, settings.burned_in_text, settings.max_frame_pixels)
    frames = frame_indices(ds, settings.frames)
    stats = []
    for i in frames:
        grey = decode_frame(ds, i, settings.max_frame_pixels, out=scratch.frame(ds))
        stats.append(_stats(luminance(grey), scratch))
    had_patient_id = bool(str(ds.get("PatientID", "") or "").strip())
    deid.deidentify(ds, collect=False)
    if redacted:
        add_method_code(ds, CLEAN_PIXEL_DATA)
    _to_explicit_little_endian(ds)
    _drop_trailing_elements(ds)
    _check_leaks(ds, originals, deid, "image")
    pydicom.dcmwrite(out_dir / f"{IMAGES_DIR}/{sha}.dcm", ds, enforce_file_format=True)
    rows = []
    for frame, frame_stats in zip(frames, stats, strict=True):
        row = _row(ds, frame, len(frames) > 1, sha, label, settings.class_names)
        row.update(frame_stats)
        rows.append(row)
    return _Ingested(rows, had_patient_id, redacted > 0)


def _ingest_seg(
    ds: Dataset,
    sha: str,
    settings: ShardSettings,
    deid: Deidentifier,
    originals: PhiAudit,
    out_dir: Path,
) -> _Ingested:
    """A SEG object, checked (segment labels, references, pixels), de-identified like an image
    (its references keep pointing at the images' new UIDs) and written to
    out_dir/segmentations/<sha>.dcm; pairing with its images comes after all shards."""
    decode_seg(ds, settings.class_names)  # raises SegError, a DicomError: quarantined
    had_patient_id = bool(str(ds.get("PatientID", "") or "").strip())
    deid.deidentify(ds, collect=False)
    _to_explicit_little_endian(ds)
    _drop_trailing_elements(ds)
    _check_leaks(ds, originals, deid, "SEG object")
    file = f"{SEGMENTATIONS_DIR}/{sha}.dcm"
    pydicom.dcmwrite(out_dir / file, ds, enforce_file_format=True)
    seg = {
        "content_hash": sha,
        "file": file,
        "patient_id": str(ds.PatientID),
        "study_id": str(ds.get("StudyInstanceUID", "")),
        "sop_instance_id": str(ds.get("SOPInstanceUID", "")),
    }
    return _Ingested([], had_patient_id, seg=seg)


def _check_leaks(ds: Dataset, originals: PhiAudit, deid: Deidentifier, what: str) -> None:
    leaked = originals.kinds_in_dataset(ds, deid.written)
    if leaked:
        kinds = sorted({kind for found in leaked.values() for kind in found})
        raise DicomError(
            f"{PHI_AUDIT}: original {', '.join(kinds)} still present after de-identification"
            f" (in {', '.join(sorted(leaked))}); the {what} was not written"
        )


def _drop_trailing_elements(ds: Dataset) -> None:
    """Digital signatures and trailing padding: invalid after de-identification anyway."""
    for tag in [t for t in ds.keys() if t > 0x7FE00010]:
        del ds[tag]


def _collect_quietly(data: bytes, audit: PhiAudit) -> None:
    try:
        audit.collect(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True))
    except Exception:
        pass  # not DICOM: nothing to remember


def _stats(grey: np.ndarray, scratch: _Scratch | None = None) -> dict[str, float]:
    """Mean, sd, min, max and the largest share of one extreme value of a float64 frame."""
    scratch = scratch or _Scratch()
    low, high = grey.min(), grey.max()
    equal = scratch.array("equal", grey.shape, np.bool_)
    return {
        "pixel_mean": float(grey.mean()),
        "pixel_std": float(_std(grey, scratch.array("deviation", grey.shape, np.float64))),
        "pixel_min": float(low),
        "pixel_max": float(high),
        "pixel_constant_fraction": float(
            max(
                np.count_nonzero(np.equal(grey, low, out=equal)),
                np.count_nonzero(np.equal(grey, high, out=equal)),
            )
            / grey.size
        ),
    }


def _std(grey: np.ndarray, deviation: np.ndarray) -> np.floating:
    """grey.std(), bit for bit (numpy's _var and _std steps), its squared deviations written
    into `deviation` (an array of grey's shape) rather than a new array."""
    if grey.dtype != np.float64 or deviation.shape != grey.shape:
        return grey.std()
    count = np.intp(grey.size)
    mean = np.add.reduce(grey, axis=None, keepdims=True)
    np.true_divide(mean, count, out=mean, casting="unsafe")
    np.subtract(grey, mean, out=deviation)
    np.square(deviation, out=deviation)
    total = np.add.reduce(deviation, axis=None)
    variance = total.dtype.type(total / np.maximum(count, 0))
    return variance.dtype.type(np.sqrt(variance))


class _Scratch:
    """Arrays reused from frame to frame and file to file (one per name, of the last shape
    asked for). Why: docs/decisions/ingest-speed.md."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """The array kept under `name`, new only when shape or dtype changed."""
        array = self._arrays.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = self._arrays[name] = np.empty(shape, dtype)
        return array

    def frame(self, ds: Dataset) -> np.ndarray | None:
        """The float64 array a grey frame of ds is decoded into (decode_frame's `out`)."""
        try:
            shape = (int(ds.Rows), int(ds.Columns))
        except (AttributeError, TypeError, ValueError):
            return None
        return self.array("frame", shape, np.float64)


def _first(ds: Dataset, *keywords: str) -> float:
    for keyword in keywords:
        value = ds.get(keyword)
        if value:
            try:
                return float(
                    value[0] if isinstance(value, list | pydicom.multival.MultiValue) else value
                )
            except (TypeError, ValueError):
                continue
    return math.nan


def _row(
    ds: Dataset, frame: int, per_frame: bool, sha: str, label: int, class_names: tuple[str, ...]
) -> dict[str, object]:
    sop = str(ds.SOPInstanceUID)
    return {
        "image_id": f"{sop}:{frame}" if per_frame else sop,
        "file": f"{IMAGES_DIR}/{sha}.dcm",
        "frame": frame,
        "patient_id": str(ds.PatientID),
        "study_id": str(ds.get("StudyInstanceUID", "")),
        "series_id": str(ds.get("SeriesInstanceUID", "")),
        "sop_instance_id": sop,
        "modality": str(ds.get("Modality", "")),
        "manufacturer": str(ds.get("Manufacturer", "")),
        "site": str(ds.get("InstitutionName", "") or ""),
        "sex": manifest.sex(ds.get("PatientSex")),
        "age_band": manifest.age_band(ds.get("PatientAge")),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "frames": n_frames(ds),
        "pixel_spacing": _first(ds, "PixelSpacing", "ImagerPixelSpacing"),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "photometric": photometric(ds),
        "label": label,
        "label_name": class_names[label],
        "split": "",
        "content_hash": sha,
        # filled by medflow.data.pairing for segmentation
        "mask_file": "",
        "mask_fraction": math.nan,
        "mask_components": 0,
    }


def _to_explicit_little_endian(ds: Dataset) -> None:
    """Write every output in explicit VR little endian: plain bytes the PHI audit can read."""
    if ds.original_encoding[0] is False and any(
        getattr(ds.get_item(tag), "VR", "") is None for tag in ds.keys()
    ):
        # Its transfer syntax says explicit VR, its data set is implicit (pydicom reads it
        # anyway): pydicom would write its raw elements without a VR. Give each one its VR.
        ds.walk(lambda *_: None)
    ts = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in ds.file_meta else None
    if ts is None or ts in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    elif ts == ExplicitVRBigEndian:
        # Words wider than a byte in other binary elements (OW, OF...) cannot be swapped
        # without knowing their layout; Pixel Data's is known. OB is byte order free.
        binary = [
            e.keyword or str(e.tag)
            for e in ds
            if e.VR in ("OW", "OF", "OD", "OL", "OV") and e.tag != 0x7FE00010
        ]
        if binary:
            raise DicomError(
                f"big-endian file with binary elements {binary}: only Pixel Data can be converted"
                " to little endian here; convert the file to explicit VR little endian first"
            )
        bits = int(ds.BitsAllocated)
        if bits > 8 and "PixelData" in ds:
            arr = np.frombuffer(ds.PixelData, dtype=f">u{bits // 8}")
            ds.PixelData = arr.astype(f"<u{bits // 8}").tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
