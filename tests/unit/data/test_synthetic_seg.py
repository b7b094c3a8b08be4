"""The synthetic source for data.task segmentation: the same images, plus a SEG per lesion."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pydicom
import pytest
from scipy import ndimage

from medflow.data.seg_objects import decode_seg
from medflow.data.synthetic import run_synth
from tests.helpers.synthetic import CLASSES, SMALL


@pytest.fixture(scope="module")
def seg_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_synth(
        SMALL, CLASSES, tmp_path_factory.mktemp("seg") / "source", "segmentation"
    ).out_dir


def test_images_and_labels_are_those_of_the_classification_source(
    synth_dir: Path, seg_source: Path
) -> None:
    assert (seg_source / "labels.csv").read_bytes() == (synth_dir / "labels.csv").read_bytes()
    for rel in pd.read_csv(synth_dir / "labels.csv").path:
        assert (seg_source / rel).read_bytes() == (synth_dir / rel).read_bytes(), rel


def test_each_lesion_image_has_a_seg_of_its_lesion_and_no_other_has_one(seg_source: Path) -> None:
    labels = pd.read_csv(seg_source / "labels.csv").set_index("path").label
    images = {pydicom.dcmread(seg_source / rel).SOPInstanceUID: rel for rel in labels.index}
    segs = sorted(seg_source.rglob("SEG*.dcm"))
    painted = set()
    for path in segs:
        seg = pydicom.dcmread(path)
        assert seg.SegmentationType == "BINARY"
        (segment,) = seg.SegmentSequence
        assert (segment.SegmentLabel, segment.SegmentAlgorithmType) == ("lesion", "MANUAL")
        decoded = decode_seg(seg, CLASSES)
        (frame,) = decoded.frames
        rel = images[frame.source_sop]
        image = pydicom.dcmread(seg_source / rel)
        assert seg.StudyInstanceUID == image.StudyInstanceUID
        assert seg.PatientID == image.PatientID
        assert path.parent == (seg_source / rel).parent and labels[rel] == "lesion"
        mask = frame.pixels
        assert mask.shape == (image.Rows, image.Columns)
        assert ndimage.label(mask)[1] == 1 and mask.sum() >= 20
        painted.add(rel)
    assert painted == set(labels[labels == "lesion"].index)


def test_the_seg_source_is_reproducible(seg_source: Path, tmp_path: Path) -> None:
    again = run_synth(SMALL, CLASSES, tmp_path / "again", "segmentation").out_dir
    for path in seg_source.rglob("SEG*.dcm"):
        assert (again / path.relative_to(seg_source)).read_bytes() == path.read_bytes()
