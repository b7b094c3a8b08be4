"""Segmentation masks for the ingested images, after every shard: SEG objects paired with the
images they reference (by de-identified SOPInstanceUID), or labels.csv's mask files.

Each manifest row gets masks/<content_hash>_<frame>.npy ((K, H, W) uint8, the image's own
geometry, empty when nothing masks it), mask_fraction, mask_components and, as its label,
the highest class its mask holds. Several SEGs of one image are united. A SEG is quarantined
when an image it references was not ingested, its rows/columns differ from the image's, its
patient differs, or a frame number is out of range; quarantined SEGs leave no file behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from scipy import ndimage

from medflow.data.manifest import MASKS_DIR, SEG_COLUMNS
from medflow.data.mask_files import MaskFileError, read_mask_file
from medflow.data.seg_objects import DecodedSeg, SegError, decode_seg
from medflow.data.shard import DUPLICATE, IMAGES_DIR, QUARANTINED, Outcome

logger = logging.getLogger(__name__)

# Outcome categories of SEGs and mask files: they depend on other files (decided every run)
SEG_MISSING_IMAGE = "SEG image missing"
SEG_GEOMETRY = "SEG geometry mismatch"
SEG_PATIENT = "SEG patient mismatch"
SEG_FRAME = "SEG frame out of range"
SEG_UNDECODABLE = "SEG undecodable"
MASK_FILE = "mask file"
PAIRING_CATEGORIES = (
    SEG_MISSING_IMAGE,
    SEG_GEOMETRY,
    SEG_PATIENT,
    SEG_FRAME,
    SEG_UNDECODABLE,
    MASK_FILE,
)


@dataclass(frozen=True)
class _Image:
    content_hash: str
    patient_id: str
    rows: int
    columns: int
    frames: int


@dataclass
class Paired:
    """The manifest with its masks, the SEGs and images quarantined, and the SEGs kept."""

    manifest: pd.DataFrame
    outcomes: list[Outcome] = field(default_factory=list)
    segs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(SEG_COLUMNS)))


def attach_masks(
    manifest: pd.DataFrame,
    segs: list[dict[str, object]],
    mask_files: dict[str, tuple[str, Path]],
    class_names: list[str],
    out: Path,
) -> Paired:
    """Pair, write the masks into out/masks and set the mask columns and labels.

    Args:
        manifest: the ingested rows (after duplicates were resolved).
        segs: the de-identified SEG objects the shards wrote (or reused) under out.
        mask_files: content hash of an image -> (its source path, its mask file) from
            labels.csv's `mask` column.
        class_names: data.class_names; K = len(class_names) - 1 segments.
        out: the (temporary) ingest output.
    """
    k = len(class_names) - 1
    images: dict[str, _Image] = {}
    for row in manifest.drop_duplicates("content_hash").itertuples(index=False):
        images[str(row.sop_instance_id)] = _Image(
            str(row.content_hash), str(row.patient_id), int(row.rows), int(row.columns),
            int(row.frames),
        )  # fmt: skip
    ingested = set(zip(manifest.content_hash, manifest.frame, strict=True))
    masks: dict[tuple[str, int], np.ndarray] = {}
    outcomes: list[Outcome] = []
    kept: list[dict[str, object]] = []
    seen: dict[str, str] = {}
    not_ingested_frames = 0
    for seg in sorted(segs, key=lambda s: str(s["path"])):
        path, sha = str(seg["path"]), str(seg["content_hash"])
        if sha in seen:
            reason = f"same content as {seen[sha]}"
            outcomes.append(Outcome(path, sha, DUPLICATE, reason, DUPLICATE))
            continue
        seen[sha] = path
        try:
            decoded = decode_seg(pydicom.dcmread(out / str(seg["file"])), class_names)
            painted = _placed(decoded, str(seg["patient_id"]), images)
        except _Refused as exc:
            outcomes.append(Outcome(path, sha, QUARANTINED, str(exc), exc.category))
            (out / str(seg["file"])).unlink(missing_ok=True)
            continue
        except SegError as exc:
            outcomes.append(Outcome(path, sha, QUARANTINED, str(exc), SEG_UNDECODABLE))
            (out / str(seg["file"])).unlink(missing_ok=True)
            continue
        for (image, frame), plane, pixels in painted:
            if (image.content_hash, frame) not in ingested:
                not_ingested_frames += 1  # preprocess.frames left that frame out
                continue
            mask = masks.setdefault(
                (image.content_hash, frame), np.zeros((k, image.rows, image.columns), np.uint8)
            )
            mask[plane] |= pixels
        record = {c: seg.get(c, "") for c in SEG_COLUMNS}
        record["referenced_sop_instance_ids"] = ";".join(decoded.referenced())
        kept.append(record)
    if not_ingested_frames:
        logger.info(
            "%d SEG frame(s) paint image frames not ingested (preprocess.frames): ignored",
            not_ingested_frames,
        )
    dropped = _from_files(manifest, mask_files, k, masks, outcomes, out)
    manifest = manifest[~manifest["content_hash"].isin(dropped)].reset_index(drop=True)
    manifest = _write_masks(manifest, masks, k, class_names, out)
    table = pd.DataFrame(kept, columns=list(SEG_COLUMNS)).astype(SEG_COLUMNS)
    logger.info(
        "segmentation: %d SEG object(s) paired, %d image frame(s) masked, %d row(s) with an"
        " empty mask",
        len(kept),
        len(masks),
        int((manifest["mask_components"] == 0).sum()),
    )
    return Paired(manifest, outcomes, table.sort_values("content_hash").reset_index(drop=True))


class _Refused(ValueError):
    def __init__(self, message: str, category: str) -> None:
        super().__init__(message)
        self.category = category


def _placed(
    decoded: DecodedSeg, patient_id: str, images: dict[str, _Image]
) -> list[tuple[tuple[_Image, int], int, np.ndarray]]:
    """((image, 0-based frame), plane, pixels) of each SEG frame; raises _Refused when a
    reference does not resolve to an ingested image of the same geometry and patient."""
    missing = [sop for sop in decoded.referenced() if sop not in images]
    if missing:
        raise _Refused(
            f"{SEG_MISSING_IMAGE}: {len(missing)} of the {len(decoded.referenced())} image(s)"
            " it references (ReferencedSOPInstanceUID) were not ingested from this source; add"
            " them, or remove the SEG",
            SEG_MISSING_IMAGE,
        )
    placed = []
    for frame in decoded.frames:
        image = images[frame.source_sop]
        if (image.rows, image.columns) != (decoded.rows, decoded.columns):
            raise _Refused(
                f"{SEG_GEOMETRY}: the SEG is {decoded.rows}x{decoded.columns} pixels but the image"
                f" it references is {image.rows}x{image.columns}",
                SEG_GEOMETRY,
            )
        if image.patient_id != patient_id:
            raise _Refused(
                f"{SEG_PATIENT}: the SEG and the image it references belong to different"
                " patients (PatientID)",
                SEG_PATIENT,
            )
        number = frame.source_frame
        if number is None and image.frames > 1:
            raise _Refused(
                f"{SEG_FRAME}: it references a {image.frames}-frame image without"
                " ReferencedFrameNumber",
                SEG_FRAME,
            )
        index = 0 if number is None else number - 1
        if not 0 <= index < image.frames:
            raise _Refused(
                f"{SEG_FRAME}: ReferencedFrameNumber {number} of an image with {image.frames}"
                " frame(s)",
                SEG_FRAME,
            )
        placed.append(((image, index), frame.plane, frame.pixels.astype(np.uint8)))
    return placed


def _from_files(
    manifest: pd.DataFrame,
    mask_files: dict[str, tuple[str, Path]],
    k: int,
    masks: dict[tuple[str, int], np.ndarray],
    outcomes: list[Outcome],
    out: Path,
) -> set[str]:
    """Masks from labels.csv's mask files (frame 0 of single-frame images); the content
    hashes of the images quarantined for their mask file."""
    dropped: set[str] = set()
    if not mask_files:
        return dropped
    geometry = manifest.drop_duplicates("content_hash").set_index("content_hash")
    for sha, (rel, mask_path) in sorted(mask_files.items(), key=lambda item: item[1][0]):
        if sha not in geometry.index:
            continue  # the image itself was not ingested: its outcome says why
        row = geometry.loc[sha]
        try:
            if int(row["frames"]) != 1:
                raise MaskFileError(
                    f"a mask file for a {int(row['frames'])}-frame image: masks of multi-frame"
                    " images come as SEG objects"
                )
            mask = read_mask_file(mask_path, k)
            shape = (int(row["rows"]), int(row["columns"]))
            if mask.shape[1:] != shape:
                raise MaskFileError(
                    f"mask is {mask.shape[1]}x{mask.shape[2]} pixels but the image is"
                    f" {shape[0]}x{shape[1]}"
                )
        except MaskFileError as exc:
            outcomes.append(Outcome(rel, sha, QUARANTINED, f"{MASK_FILE}: {exc}", MASK_FILE))
            dropped.add(sha)
            (out / IMAGES_DIR / f"{sha}.dcm").unlink(missing_ok=True)
            continue
        key = (sha, 0)
        masks[key] = masks[key] | mask if key in masks else mask
    return dropped


def _write_masks(
    manifest: pd.DataFrame,
    masks: dict[tuple[str, int], np.ndarray],
    k: int,
    class_names: list[str],
    out: Path,
) -> pd.DataFrame:
    (out / MASKS_DIR).mkdir(exist_ok=True)
    files, fractions, components, labels = [], [], [], []
    for sha, frame, rows, columns in zip(
        manifest["content_hash"],
        manifest["frame"],
        manifest["rows"],
        manifest["columns"],
        strict=True,
    ):
        mask = masks.get((str(sha), int(frame)))
        if mask is None:
            mask = np.zeros((k, int(rows), int(columns)), np.uint8)
        name = f"{MASKS_DIR}/{sha}_{int(frame)}.npy"
        np.save(out / name, mask, allow_pickle=False)
        files.append(name)
        fractions.append(float(mask.any(axis=0).mean()) if mask.size else 0.0)
        components.append(sum(int(ndimage.label(plane)[1]) for plane in mask))
        present = [i + 1 for i in range(k) if mask[i].any()]
        labels.append(max(present, default=0))
    manifest = manifest.copy()
    manifest["mask_file"] = pd.array(files, dtype="string")
    manifest["mask_fraction"] = np.asarray(fractions, dtype=np.float64)
    manifest["mask_components"] = np.asarray(components, dtype=np.int64)
    manifest["label"] = np.asarray(labels, dtype=np.int64)
    manifest["label_name"] = pd.array([class_names[i] for i in labels], dtype="string")
    return manifest
