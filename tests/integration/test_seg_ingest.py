"""Segmentation ingest on real files: highdicom's SEG test objects with their CT images
(../shared/data/dicom-seg, pydicom's CT series), and the synthetic source's own SEGs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medflow.config import Params, SynthParams
from medflow.data.ingest import IngestConfig, IngestResult, run_ingest
from medflow.data.synthetic import run_synth
from tests.helpers.deid_key import KEY
from tests.helpers.shared_data import shared_data

CT_SERIES = Path(pydicom.__file__).parent / "data/test_files/dicomdirtests/77654033/CT2"
SEG_CLASSES = ["background", "first segment"]  # highdicom's test SEGs label their segment so


def _ingest(source: Path, out: Path, class_names: list[str]) -> IngestResult:
    params = Params.model_validate(
        {
            "data": {"source": str(source), "class_names": class_names, "task": "segmentation"},
            "ingest": {"max_quarantine_fraction": 1.0, "workers": 1},
        }
    )
    return run_ingest(IngestConfig.from_params(params), source, out, KEY)


def _copy(folder: Path, *files: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, folder / f.name)


def _manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)


def _quarantine(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "quarantine.csv", dtype=str, keep_default_na=False)


def _references(seg: pydicom.Dataset) -> list[str]:
    return [
        source.ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for source in derivation.SourceImageSequence
    ]


def test_real_segs_pair_with_their_images_after_deidentification(tmp_path: Path) -> None:
    seg_dir = shared_data("dicom-seg")
    source = tmp_path / "source"
    _copy(source, *sorted(seg_dir.glob("*.dcm")), *sorted(CT_SERIES.iterdir()))
    result = _ingest(source, tmp_path / "out", SEG_CLASSES)
    out = tmp_path / "out"
    manifest = _manifest(out)
    # ct_image, dx_image and the four CT slices; the SR is no image, the SEGs are masks
    assert result.n_images == 6
    quarantine = _quarantine(out)
    assert list(quarantine.path) == ["sr_document.dcm"]
    kept = pd.read_csv(out / "segmentations.csv", dtype=str)
    assert len(kept) == 2
    by_sop = manifest.set_index("sop_instance_id")
    originals = {
        pydicom.dcmread(p).SOPInstanceUID for p in [*seg_dir.glob("*.dcm"), *CT_SERIES.iterdir()]
    }
    for file in kept.file:
        seg = pydicom.dcmread(out / file)
        references = _references(seg)
        assert references and set(references) <= set(by_sop.index)  # resolve after deid
        assert not set(references) & originals  # and are not the original UIDs
        assert {by_sop.loc[r, "patient_id"] for r in references} == {seg.PatientID}
        assert {by_sop.loc[r, "study_id"] for r in references} == {seg.StudyInstanceUID}
        assert seg.PatientIdentityRemoved == "YES"
    # The single-frame SEG's mask, in the ingested mask of its CT image
    original_seg = pydicom.dcmread(seg_dir / "seg_image_ct_binary_single_frame.dcm")
    ct = pydicom.dcmread(seg_dir / "ct_image.dcm")
    ct_row = (
        manifest[manifest.pixel_mean.astype(float).notna()]
        .loc[manifest.content_hash == _sha(seg_dir / "ct_image.dcm")]
        .iloc[0]
    )
    mask = np.load(out / ct_row.mask_file)
    assert mask.shape == (1, ct.Rows, ct.Columns) and mask.dtype == np.uint8
    assert np.array_equal(mask[0], original_seg.pixel_array > 0)
    assert ct_row.label == "1" and int(ct_row.mask_components) >= 1
    assert float(ct_row.mask_fraction) == pytest.approx(mask.mean())
    # The 3-frame SEG paints slices 17136, 17166, 17196 but not 17106; DX has no SEG
    labels = {_sha(CT_SERIES / n): "1" for n in ("17136", "17166", "17196")}
    labels |= {_sha(CT_SERIES / "17106"): "0", _sha(seg_dir / "dx_image.dcm"): "0"}
    for sha, label in labels.items():
        row = manifest[manifest.content_hash == sha].iloc[0]
        assert row.label == label, sha
        assert np.load(out / row.mask_file).any() == (label == "1")


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_seg_without_its_image_or_of_other_geometry_is_quarantined(tmp_path: Path) -> None:
    seg_dir = shared_data("dicom-seg")
    source = tmp_path / "source"
    # The 3-frame SEG without slice 17196, which it references
    _copy(source, seg_dir / "seg_image_ct_binary.dcm", CT_SERIES / "17136", CT_SERIES / "17166")
    # The single-frame SEG (128x128) with its CT image cropped to 64x64, same UIDs
    _copy(source, seg_dir / "seg_image_ct_binary_single_frame.dcm")
    ct = pydicom.dcmread(seg_dir / "ct_image.dcm")
    ct.PixelData = np.ascontiguousarray(ct.pixel_array[:64, :64]).tobytes()
    ct.Rows = ct.Columns = 64
    ct.save_as(source / "ct_cropped.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    first = _ingest(source, out, SEG_CLASSES)
    quarantine = _quarantine(out).set_index("path")
    missing = quarantine.loc["seg_image_ct_binary.dcm"]
    assert (missing.outcome, missing.category) == ("quarantined", "SEG image missing")
    assert "1 of the 3 image(s) it references" in missing.reason
    geometry = quarantine.loc["seg_image_ct_binary_single_frame.dcm"]
    assert geometry.category == "SEG geometry mismatch"
    assert "128x128" in geometry.reason and "64x64" in geometry.reason
    assert first.n_images == 3 and _manifest(out).label.eq("0").all()
    assert not list((out / "segmentations").iterdir())  # quarantined SEGs leave nothing
    assert pd.read_csv(out / "segmentations.csv").empty

    # The missing slice arrives: the re-ingest pairs the SEG, reusing what it read before
    _copy(source, CT_SERIES / "17196")
    second = _ingest(source, out, SEG_CLASSES)
    assert second.n_reused == 3  # the two slices and the cropped CT; the SEGs are read again
    quarantine = _quarantine(out)
    assert list(quarantine.path) == ["seg_image_ct_binary_single_frame.dcm"]
    manifest = _manifest(out)
    assert sorted(manifest.label) == ["0", "1", "1", "1"]
    assert len(pd.read_csv(out / "segmentations.csv")) == 1

    # Nothing changed: reused as a whole; after a touch, the paired SEG is reused from the
    # last output (segmentations.csv), the quarantined one read again
    assert _ingest(source, out, SEG_CLASSES).unchanged
    (source / "17136").touch()
    third = _ingest(source, out, SEG_CLASSES)
    assert third.n_reused == 4 and third.data_hash == second.data_hash
    assert _manifest(out).equals(manifest)


def test_synthetic_segs_ingest_back_to_the_drawn_lesions(tmp_path: Path) -> None:
    classes = ["normal", "lesion"]
    params = SynthParams(n_patients=6, images_per_patient=2, lesion_prevalence=0.5, seed=5)
    source = run_synth(params, classes, tmp_path / "synthetic", "segmentation").out_dir
    seg_files = sorted(source.rglob("SEG*.dcm"))
    labels = pd.read_csv(source / "labels.csv")
    assert len(seg_files) == (labels.label == "lesion").sum() > 0
    result = _ingest(source, tmp_path / "out", classes)
    out = tmp_path / "out"
    assert result.n_images == len(labels) and result.outcomes == {}
    manifest = _manifest(out)
    by_sop = manifest.set_index("sop_instance_id")
    painted = set()
    for seg_file in seg_files:
        original = pydicom.dcmread(seg_file)
        (image_sop,) = _references(original)
        image = next(
            p for p in source.rglob("IM*") if pydicom.dcmread(p).SOPInstanceUID == image_sop
        )
        row = manifest[manifest.content_hash == _sha(image)].iloc[0]
        mask = np.load(out / row.mask_file)
        assert np.array_equal(mask[0], original.pixel_array > 0)  # the drawn lesion
        assert row.label == "1" and row.mask_components == "1"
        painted.add(row.sop_instance_id)
        # the kept SEG refers to the ingested image's de-identified UID, same pseudonym
        kept = pydicom.dcmread(out / "segmentations" / f"{_sha(seg_file)}.dcm")
        assert _references(kept) == [row.sop_instance_id]
        assert kept.PatientID == by_sop.loc[row.sop_instance_id, "patient_id"]
    unpainted = manifest[~manifest.sop_instance_id.isin(painted)]
    assert (unpainted.label == "0").all() and (unpainted.mask_components == "0").all()
    assert all(not np.load(out / f).any() for f in unpainted.mask_file)
