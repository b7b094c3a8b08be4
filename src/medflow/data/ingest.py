"""The ingest stage: DICOM folder (or .npz archive) + labels -> de-identified dataset + manifest.

Every readable, labelled image is de-identified and written to images/<image_id>.dcm with
one manifest row; every other file goes to quarantine.csv with its reason and the run goes
on. Before the output folder appears, a PHI audit searches every output byte for the
original identifiers. The output is built in a temporary folder and renamed into place.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medflow.config import DataParams
from medflow.data.deid import Deidentifier
from medflow.data.manifest import COLUMNS, MANIFEST_FILE, SPLITS
from medflow.data.npz_source import npz_to_dicom
from medflow.data.splits import assign_splits
from medflow.errors import IngestFailed
from medflow.io import atomic_dir, write_json_atomic
from medflow.preprocess import DicomError, decode_pixels, read_dicom

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
IMAGES_DIR = "images"
QUARANTINE_FILE = "quarantine.csv"
PHI_AUDIT_FILE = "phi_audit.json"

NO_LABEL = "no label"
MISSING = "listed in labels.csv but missing"


@dataclass(frozen=True)
class IngestResult:
    n_images: int
    n_quarantined: int
    n_patients: int
    manifest: Path
    data_hash: str  # sha256 over the sorted (content hash, label) pairs
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images


@dataclass(frozen=True)
class _Quarantined:
    path: str  # relative to the source
    sha256: str
    reason: str
    category: str  # short, value-free: what the logs count


def _read_labels(source: Path, class_names: list[str]) -> dict[str, int]:
    """labels.csv as {relative path: class index}; every problem reported at once."""
    path = source / LABELS_FILE
    if not path.is_file():
        raise IngestFailed(
            f"no {LABELS_FILE} in the source folder {source}: add one with the columns path,label"
            " (path relative to that folder, label = a class name or its index in data.class_names)"
        )
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise IngestFailed(f"{path} is not a readable CSV file: {exc}") from exc
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise IngestFailed(
            f"{path} lacks the column(s) {sorted(missing)}; expected the header path,label"
            f" (found {list(table.columns)})"
        )
    index = {name: i for i, name in enumerate(class_names)}
    labels: dict[str, int] = {}
    unknown: set[str] = set()
    conflicting: set[str] = set()
    for raw_path, raw_label in zip(table["path"], table["label"], strict=True):
        rel = raw_path.strip().replace("\\", "/").removeprefix("./")
        label_text = raw_label.strip()
        if label_text in index:
            label = index[label_text]
        elif label_text.isdigit() and int(label_text) < len(class_names):
            label = int(label_text)
        else:
            unknown.add(label_text)
            continue
        if labels.get(rel, label) != label:
            conflicting.add(rel)
        labels[rel] = label
    problems = []
    if unknown:
        problems.append(
            f"{len(unknown)} unknown label value(s) {sorted(unknown)[:10]}; expected one of"
            f" data.class_names {class_names} or an index 0..{len(class_names) - 1}"
        )
    if conflicting:
        problems.append(f"{len(conflicting)} path(s) listed twice with different labels")
    if problems:
        raise IngestFailed(f"{path}: " + "; ".join(problems))
    return labels


def _source_files(source: Path) -> list[str]:
    files = (p for p in source.rglob("*") if p.is_file())
    return sorted(p.relative_to(source).as_posix() for p in files if p != source / LABELS_FILE)


def _to_explicit_little_endian(ds: Dataset) -> None:
    """Write every output in explicit VR little endian: plain bytes the PHI audit can read."""
    ts = ds.file_meta.TransferSyntaxUID
    if ts in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    elif ts == ExplicitVRBigEndian:
        binary = [e.keyword or str(e.tag) for e in ds if e.VR in ("OW", "OF", "OD", "OL", "OV")]
        if binary != ["PixelData"]:
            raise DicomError(
                f"big-endian file with binary elements {binary}: only Pixel Data can be converted"
                " to little endian here; convert the file to explicit VR little endian first"
            )
        bits = int(ds.BitsAllocated)
        if bits > 8:
            arr = np.frombuffer(ds.PixelData, dtype=f">u{bits // 8}")
            ds.PixelData = arr.astype(f"<u{bits // 8}").tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


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
    ds: Dataset,
    grey: np.ndarray,
    frames: int,
    content_hash: str,
    label: int,
    class_names: list[str],
) -> dict[str, object]:
    image_id = str(ds.SOPInstanceUID)
    return {
        "image_id": image_id,
        "file": f"{IMAGES_DIR}/{image_id}.dcm",
        "patient_id": str(ds.PatientID),
        "study_id": str(ds.get("StudyInstanceUID", "")),
        "series_id": str(ds.get("SeriesInstanceUID", "")),
        "modality": str(ds.get("Modality", "")),
        "manufacturer": str(ds.get("Manufacturer", "")),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "frames": frames,
        "pixel_spacing": _first(ds, "PixelSpacing", "ImagerPixelSpacing"),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "photometric": str(ds.get("PhotometricInterpretation", "")).strip(),
        "label": label,
        "label_name": class_names[label],
        "split": "",
        "content_hash": content_hash,
        "pixel_mean": float(grey.mean()),
        "pixel_std": float(grey.std()),
        "pixel_min": float(grey.min()),
        "pixel_max": float(grey.max()),
    }


def _ingest_folder(
    source: Path,
    tmp: Path,
    class_names: list[str],
    deid: Deidentifier,
    official_splits: dict[str, str] | None,
) -> tuple[list[dict[str, object]], list[_Quarantined]]:
    labels = _read_labels(source, class_names)
    rows: list[dict[str, object]] = []
    quarantined: list[_Quarantined] = []
    seen: set[str] = set()
    without_patient_id = 0
    (tmp / IMAGES_DIR).mkdir()
    files = _source_files(source)
    for rel in files:
        sha = ""
        try:
            data = (source / rel).read_bytes()  # inputs are only ever read
            sha = hashlib.sha256(data).hexdigest()
            if rel not in labels:
                _collect_quietly(data, deid)  # its identifiers may still appear in paths
                quarantined.append(_Quarantined(rel, sha, NO_LABEL, NO_LABEL))
                continue
            ds = read_dicom(data)
            # Remember the originals now: the file may still fail below, its path and
            # reason are written to quarantine.csv and must not leak them.
            deid.audit.collect(ds)
            grey, frames, _ = decode_pixels(ds)
            if not str(ds.get("PatientID", "") or "").strip():
                without_patient_id += 1
            deid.deidentify(ds)
            image_id = str(ds.SOPInstanceUID)
            if image_id in seen:
                raise DicomError("duplicate: another file with the same SOPInstanceUID came first")
            _to_explicit_little_endian(ds)
            buf = io.BytesIO()
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
            (tmp / IMAGES_DIR / f"{image_id}.dcm").write_bytes(buf.getvalue())
            seen.add(image_id)
            row = _row(ds, grey, frames, sha, labels[rel], class_names)
            if official_splits is not None:
                row["split"] = official_splits[rel]
            rows.append(row)
        except DicomError as exc:
            category = re.split(r"[:(;]", str(exc))[0].strip()
            quarantined.append(_Quarantined(rel, sha, str(exc), category))
        except Exception as exc:  # one bad file must not stop the run
            reason = f"unexpected {type(exc).__name__}: {exc}"
            quarantined.append(_Quarantined(rel, sha, reason, f"unexpected {type(exc).__name__}"))
    present = set(files)
    for rel in sorted(set(labels) - present):
        quarantined.append(_Quarantined(rel, "", MISSING, MISSING))
    if without_patient_id:
        logger.warning(
            "%d image(s) have no PatientID: each of their studies is treated as its own patient",
            without_patient_id,
        )
    return rows, quarantined


def _collect_quietly(data: bytes, deid: Deidentifier) -> None:
    try:
        deid.audit.collect(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True))
    except Exception:
        pass  # not DICOM: nothing to remember


def _write_quarantine(path: Path, quarantined: list[_Quarantined], deid: Deidentifier) -> None:
    def safe(text: str) -> str:
        # Hospital exports name folders after patients: never copy an identifier along.
        kinds = deid.audit.kinds_in_text(text)
        return f"[withheld: contains {', '.join(sorted(kinds))}]" if kinds else text

    records = [(safe(q.path), q.sha256, safe(q.reason)) for q in quarantined]
    pd.DataFrame(records, columns=["path", "sha256", "reason"]).to_csv(path, index=False)


def _audit(tmp: Path, deid: Deidentifier) -> None:
    outputs = sorted(p for p in tmp.rglob("*") if p.is_file())
    findings = deid.audit.scan(outputs)
    write_json_atomic(
        tmp / PHI_AUDIT_FILE,
        {
            "files_scanned": len(outputs),
            "findings": len(findings),
            "identifying_values_checked": len(deid.audit),
            "values_too_short_to_check": deid.audit.n_unscannable,
        },
    )
    if findings:
        shown = "; ".join(f"{f.file.relative_to(tmp)}: {f.kind}" for f in findings[:10])
        raise IngestFailed(
            f"PHI audit failed: {len(findings)} original identifier(s) found in the output"
            f" ({shown}{'; ...' if len(findings) > 10 else ''}); nothing was written. Check the"
            " de-identification of these attributes before ingesting this source"
        )


@contextmanager
def _no_value_warnings() -> Iterator[None]:
    """pydicom's invalid-value warnings quote the value (a UID, a name): keep them out of logs."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def run_ingest(params: DataParams, source: Path, out_dir: Path, key: bytes) -> IngestResult:
    """Ingest a DICOM folder with labels.csv, or a MedMNIST-style .npz, into out_dir."""
    with _no_value_warnings():
        return _run_ingest(params, source, out_dir, key)


def _run_ingest(params: DataParams, source: Path, out_dir: Path, key: bytes) -> IngestResult:
    source, out_dir = Path(source), Path(out_dir)
    class_names = list(params.class_names)
    if not source.exists():
        raise IngestFailed(f"data source {source} does not exist (data.source: {params.source!r})")
    if out_dir.resolve().is_relative_to(source.resolve()):
        raise IngestFailed(f"output folder {out_dir} is inside the source {source}; move it out")
    deid = Deidentifier(key)
    official: dict[str, str] | None = None  # an .npz archive brings its own splits
    with atomic_dir(out_dir) as tmp:
        if source.is_file() and source.suffix.lower() == ".npz":
            with tempfile.TemporaryDirectory(prefix="medflow-npz-") as scratch:
                try:
                    records = npz_to_dicom(source, class_names, Path(scratch) / "dicom")
                except ValueError as exc:
                    raise IngestFailed(str(exc)) from exc
                official = {r.path: r.split for r in records}
                rows, quarantined = _ingest_folder(
                    Path(scratch) / "dicom", tmp, class_names, deid, official
                )
        elif source.is_dir():
            rows, quarantined = _ingest_folder(source, tmp, class_names, deid, None)
        else:
            raise IngestFailed(
                f"data source {source} is neither a folder (DICOM files + {LABELS_FILE})"
                " nor an .npz archive"
            )
        by_category = dict(Counter(q.category for q in quarantined).most_common())
        if not rows:
            raise IngestFailed(
                f"no image could be ingested from {source}: {len(quarantined)} file(s) quarantined"
                f" ({by_category}); check labels.csv and that the files are DICOM images"
            )
        manifest = pd.DataFrame(rows, columns=list(COLUMNS))
        if official is None:
            splits = assign_splits(manifest[["patient_id", "label"]], params.split)
            manifest["split"] = manifest["patient_id"].map(splits)
        manifest = manifest.sort_values("file").astype(COLUMNS)
        manifest.to_csv(tmp / MANIFEST_FILE, index=False)
        _write_quarantine(tmp / QUARANTINE_FILE, quarantined, deid)
        _audit(tmp, deid)

    pairs = sorted((manifest.content_hash + "," + manifest.label_name).tolist())
    data_hash = hashlib.sha256("\n".join(pairs).encode()).hexdigest()
    counts = {
        split: {
            name: int(((manifest.split == split) & (manifest.label_name == name)).sum())
            for name in class_names
        }
        for split in SPLITS
    }
    n_patients = int(manifest.patient_id.nunique())
    logger.info(
        "ingested %d images of %d patients, quarantined %d %s; per split and class: %s",
        len(manifest),
        n_patients,
        len(quarantined),
        by_category,
        counts,
    )
    return IngestResult(
        n_images=len(manifest),
        n_quarantined=len(quarantined),
        n_patients=n_patients,
        manifest=out_dir / MANIFEST_FILE,
        data_hash=data_hash,
        counts=counts,
    )
