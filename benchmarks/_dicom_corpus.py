"""A synthetic, PACS-export-like DICOM corpus for the benchmarks, written fast and seeded.

Clinical sizes and headers: CT slices (512 x 512 by default, 12 bits stored in 16, rescale to
Hounsfield units, two VOI windows, patient and study identifiers, a vendor private block),
several patients with one series each, in patient/series folders, some files without the
`.dcm` extension. Transfer syntaxes as a PACS export mixes them: mostly explicit VR little
endian, some implicit VR little endian, JPEG 2000 lossless and RLE lossless.

Pixel synthesis and compression are the slow parts, so a few distinct slices are made and
encoded once per transfer syntax and their pixel bytes shared by every file; each file gets
its own patient, study, series and instance identifiers, so every file has its own bytes.
File i depends only on (seed, i, size): a corpus of n files is the first n of a larger one.

    python benchmarks/_dicom_corpus.py OUT --count 1000 [--size 512] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
CLASS_NAMES = ("normal", "lesion")
# (transfer syntax, share of files), in the order files cycle through them.
TRANSFER_SYNTAXES: tuple[tuple[UID, float], ...] = (
    (ExplicitVRLittleEndian, 0.75),
    (ImplicitVRLittleEndian, 0.05),
    (JPEG2000Lossless, 0.15),
    (RLELossless, 0.05),
)
DISTINCT_SLICES = 8  # pixel arrays made (and encoded per syntax); shared by all files
SLICES_PER_SERIES = 120  # files per patient (one CT series each)
NO_EXTENSION_EVERY = 4  # every n-th file is written without `.dcm`, as many exports are
UID_ROOT = "1.2.826.0.1.3680043.10.1234."  # a fictional org root; never a real device's

_SYLLABLES = "bra dov kel mir quo zan tev lor vyx sul gar fen nox pim rha wex jol tus".split()


@dataclass(frozen=True)
class CorpusFile:
    rel: str  # path relative to the corpus folder
    label: str
    transfer_syntax: UID


def _uid(seed: int, *parts: object) -> str:
    """A deterministic, valid UID (digits only, at most 64 characters)."""
    text = "/".join(str(p) for p in (seed, *parts)).encode()
    digits = str(int.from_bytes(hashlib.sha256(text).digest()[:16], "big"))
    return (UID_ROOT + digits)[:64].rstrip(".")


def _syntax_of(i: int) -> UID:
    """Transfer syntax of file i: a fixed pattern over blocks of 20 files, shares as above."""
    slot = (i * 7) % 20  # 7 is coprime to 20: spreads the syntaxes within every block
    edge = 0.0
    for ts, share in TRANSFER_SYNTAXES:
        edge += share * 20
        if slot < round(edge):
            return ts
    return TRANSFER_SYNTAXES[0][0]


def _slice(rng: np.random.Generator, size: int, position: float) -> np.ndarray:
    """A CT-like axial slice in stored values (HU + 1024, 12 bits): body, lungs, spine, noise."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    hu = np.full((size, size), -1000.0)  # air
    body = (x / 0.85) ** 2 + (y / 0.62) ** 2 < 1
    hu[body] = 40.0  # soft tissue
    for side in (-1, 1):  # lungs shrink towards the ends of the series
        lung = ((x - side * 0.38) / (0.28 + 0.05 * position)) ** 2 + ((y + 0.05) / 0.42) ** 2 < 1
        hu[lung & body] = -820.0
    spine = (x / 0.09) ** 2 + ((y - 0.42) / 0.09) ** 2 < 1
    hu[spine] = 700.0
    table = (np.abs(y - 0.78) < 0.015) & (np.abs(x) < 0.9)
    hu[table] = 200.0
    hu += rng.normal(0.0, 12.0, hu.shape)  # quantum noise: what makes lossless codecs work
    return np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.uint16)


def _name(rng: np.random.Generator) -> str:
    def word() -> str:
        return "".join(rng.choice(_SYLLABLES, size=2)).capitalize()

    return f"{word()}^{word()}"


def _template(pixels: np.ndarray, ts: UID) -> Dataset:
    """A CT image with every attribute that does not change from file to file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.SourceApplicationEntityTitle = "PACS_EXPORT"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.Manufacturer = "Synthetic Medical Systems"
    ds.ManufacturerModelName = "SynthCT 128"
    ds.StationName = "CT01"
    ds.BodyPartExamined = "CHEST"
    ds.ReferringPhysicianName = "Kelmir^Zantev"
    ds.StudyDescription = "CT THORAX WITH CONTRAST"
    ds.SeriesDescription = "AXIAL 1.0 B30f"
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500.0"
    ds.ReconstructionDiameter = "380.0"
    ds.XRayTubeCurrent = 245
    ds.ConvolutionKernel = "B30f"
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [round(380.0 / pixels.shape[0], 6)] * 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = [40, -600]
    ds.WindowWidth = [400, 1500]
    ds.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    block = ds.private_block(0x0009, "SYNTH_PRIVATE_01", create=True)
    block.add_new(0x01, "LO", "RECON-7")
    block.add_new(0x02, "DS", "0.75")
    ds.PixelData = pixels.tobytes()
    if ts.is_compressed:
        ds.compress(ts, pixels, encoding_plugin="pylibjpeg")
    else:
        ds.file_meta.TransferSyntaxUID = ts
    return ds


def _set_identifiers(ds: Dataset, i: int, seed: int) -> tuple[int, int]:
    """Write file i's patient, study, series and instance attributes; (patient, instance)."""
    patient, instance = divmod(i, SLICES_PER_SERIES)
    rng = np.random.default_rng([seed, patient])  # per patient: a prefix keeps its identities
    ds.PatientName = _name(rng)
    ds.PatientID = f"MRN{rng.integers(10**7, 10**8)}"
    ds.PatientBirthDate = (
        f"{rng.integers(1935, 2005)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    )
    ds.PatientSex = str(rng.choice(["F", "M"]))
    ds.PatientAge = f"{rng.integers(18, 90):03d}Y"
    ds.InstitutionName = f"{_name(rng).split('^')[0]} Synthetic Hospital"
    ds.AccessionNumber = f"ACC{rng.integers(10**8, 10**9)}"
    study_date = f"2024{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = study_date
    ds.StudyTime = ds.SeriesTime = f"{rng.integers(7, 19):02d}{rng.integers(0, 60):02d}00"
    ds.StudyID = str(rng.integers(1000, 9999))
    ds.StudyInstanceUID = _uid(seed, "study", patient)
    ds.SeriesInstanceUID = _uid(seed, "series", patient)
    ds.FrameOfReferenceUID = _uid(seed, "frame", patient)
    ds.SeriesNumber = 2
    sop = _uid(seed, "sop", i)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.InstanceNumber = instance + 1
    z = -50.0 - instance * 1.0
    ds.ImagePositionPatient = [-190.0, -190.0, z]
    ds.SliceLocation = z
    ds.AcquisitionNumber = 1
    ds.ContentTime = f"{rng.integers(7, 19):02d}{rng.integers(0, 60):02d}{instance % 60:02d}"
    return patient, instance


def _label(seed: int, patient: int) -> str:
    return CLASS_NAMES[int(np.random.default_rng([seed, patient, 1]).random() < 0.4)]


def _rel(i: int, patient: int, instance: int) -> str:
    ext = "" if i % NO_EXTENSION_EVERY == NO_EXTENSION_EVERY - 1 else ".dcm"
    return f"PAT{patient + 1:05d}/SER00002/IM{instance + 1:05d}{ext}"


def write_corpus(out: Path, count: int, size: int = 512, seed: int = 0) -> list[CorpusFile]:
    """Write `count` DICOM files and labels.csv (path,label) into out; return what was written."""
    if count < 1 or size < 16:
        raise ValueError(f"need count >= 1 and size >= 16, got count={count}, size={size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, size])
    slices = [_slice(rng, size, k / max(DISTINCT_SLICES - 1, 1)) for k in range(DISTINCT_SLICES)]
    used = {_syntax_of(i) for i in range(min(count, 20))}
    templates = {
        ts: [_template(pixels, ts) for pixels in slices]
        for ts, _ in TRANSFER_SYNTAXES
        if ts in used
    }
    files: list[CorpusFile] = []
    for i in range(count):
        ts = _syntax_of(i)
        ds = templates[ts][i % DISTINCT_SLICES]
        patient, instance = _set_identifiers(ds, i, seed)
        rel = _rel(i, patient, instance)
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(CorpusFile(rel, _label(seed, patient), ts))
    with (out / LABELS_FILE).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows((f.rel, f.label) for f in files)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--count", type=int, default=1000, help="number of DICOM files")
    parser.add_argument("--size", type=int, default=512, help="rows and columns per image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    files = write_corpus(args.out, args.count, args.size, args.seed)
    mib = sum((args.out / f.rel).stat().st_size for f in files) / 2**20
    syntaxes: dict[str, int] = {}
    for f in files:
        syntaxes[f.transfer_syntax.name] = syntaxes.get(f.transfer_syntax.name, 0) + 1
    print(
        f"wrote {len(files)} files ({mib:.0f} MiB) in {time.perf_counter() - start:.1f} s"
        f" to {args.out}; transfer syntaxes: {syntaxes}"
    )


if __name__ == "__main__":
    main()
