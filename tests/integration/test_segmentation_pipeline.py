"""Segmentation end to end: a real `dvc repro` with `data.task: segmentation` on the synthetic
data, through synth (DICOM SEG beside the images), ingest (SEGs paired with their images after
de-identification), validation of the masks, the U-Net, Dice/IoU/HD95 evaluation, the gate and
the Bento."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medflow.handoffs import GateReport, SegmentationMetrics, read_metrics
from tests.helpers.pipeline_copy import make_copy, package_in_background
from tests.helpers.stages import always_changed, dvc_stages, ran_stages

SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _prepare(dest: Path) -> None:
    make_copy(
        dest,
        {
            "data": {"task": "segmentation"},
            "train": {
                "unet_max_epochs": 40,
                "unet_channels": [8, 16, 32],
                "early_stopping_patience": 8,
            },
            # 28 test images: a tiny run's floor, far below the default's 0.8
            "gate": {"min_dice": 0.5, "min_dice_ci_low": 0.3, "max_hd95": 30.0},
        },
    )


REPRO = package_in_background("segmentation_repo", _prepare)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    dest, proc = REPRO.result(tmp_path_factory)
    assert proc.returncode == 0, (
        f"dvc repro package exited {proc.returncode}\n--stdout--\n{proc.stdout[-4000:]}"
        f"\n--stderr--\n{proc.stderr[-4000:]}"
    )
    return dest, proc.stdout + proc.stderr


def test_every_stage_ran_and_a_bento_was_built(repo) -> None:
    dest, out = repo
    assert set(dvc_stages()) - always_changed() <= ran_stages(out)
    bento = json.loads((dest / "reports/bento.json").read_text())
    assert bento["bento_tag"].startswith("medflow-service:")
    spec = json.loads((dest / "models/model.json").read_text())
    assert spec["task"] == "segmentation" and spec["architecture"] == "unet"


def test_synth_wrote_segs_and_ingest_kept_their_references(repo) -> None:
    dest, _ = repo
    segs = [
        p
        for p in (dest / "data/synthetic").rglob("*.dcm")
        if pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID == SEGMENTATION_SOP_CLASS
    ]
    assert segs, "synth wrote no DICOM SEG"
    ingested = dest / "data/ingested"
    manifest = pd.read_csv(ingested / "manifest.csv", dtype=str)
    sops = set(manifest["sop_instance_id"])
    kept = sorted((ingested / "segmentations").glob("*.dcm"))
    assert len(kept) == len(segs)
    for path in kept:
        seg = pydicom.dcmread(path)
        refs = {
            item.ReferencedSOPInstanceUID
            for frame in seg.PerFrameFunctionalGroupsSequence
            for derivation in frame.DerivationImageSequence
            for item in derivation.SourceImageSequence
        }
        assert refs and refs <= sops  # the de-identified references resolve
        row = manifest[manifest["sop_instance_id"].isin(refs)].iloc[0]
        image = pydicom.dcmread(ingested / row["file"], stop_before_pixels=True)
        assert seg.PatientID == image.PatientID  # one pseudonym for a SEG and its image
        assert seg.StudyInstanceUID == image.StudyInstanceUID
    lesions = manifest[manifest["label"] == "1"]
    assert len(lesions) == len(segs)
    for rel in lesions["mask_file"]:
        assert np.load(ingested / rel).any()


def test_metrics_pass_the_gate(repo) -> None:
    dest, _ = repo
    metrics = read_metrics(dest / "reports/metrics.json")
    assert isinstance(metrics, SegmentationMetrics)
    assert metrics.dice >= 0.5, metrics
    assert metrics.dice_ci_low <= metrics.dice <= metrics.dice_ci_high
    gate = GateReport.read(dest / "reports/gate.json")
    assert gate.passed is True, gate.failures
    assert {"gate.min_dice", "gate.min_dice_ci_low", "gate.max_hd95"} <= {
        r.rule for r in gate.rules
    }
    for name in ("best", "median", "worst"):
        assert (dest / f"reports/plots/overlay_{name}.png").stat().st_size > 0
    card = (dest / "reports/model_card.md").read_text()
    assert "Dice" in card and "overlay_worst.png" in card
