"""The model input side follows a source smaller than preprocess.image_size (28 px -> 32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medflow.config import DataParams, DeidParams, IngestParams, PreprocessParams
from medflow.data.arrays import load_split, read_meta
from medflow.data.ingest import IngestConfig, run_ingest
from medflow.data.preprocessing import input_size, run_preprocess
from medflow.imaging.preprocess import preprocess_file
from medflow.models.artifact import ModelSpec
from tests.helpers.deid_key import KEY
from tests.helpers.npz_archives import SIZES, make_npz


def _manifest(sides: list[tuple[int, int]], split: str = "train") -> pd.DataFrame:
    return pd.DataFrame(
        {"rows": [r for r, _ in sides], "columns": [c for _, c in sides], "split": split}
    )


@pytest.mark.parametrize(
    ("sides", "image_size", "expected"),
    [
        ([(28, 28)] * 3, 64, 32),  # MedMNIST: rounded up to a multiple of 8
        ([(32, 32)], 64, 32),
        ([(20, 30), (30, 20), (500, 500)], 64, 32),  # the median longer side: 30
        ([(96, 96), (80, 80)], 64, 64),  # larger sources: image_size, downsampled
        ([(64, 64)], 64, 64),
        ([(3, 3)], 64, 8),  # never below 8
        ([(28, 28)], 16, 16),  # never above image_size
    ],
)
def test_the_side_follows_a_smaller_source(sides, image_size, expected) -> None:
    params = PreprocessParams(image_size=image_size)
    assert input_size(params, _manifest(sides)).image_size == expected


def test_the_train_split_decides_and_the_switch_turns_it_off() -> None:
    manifest = pd.concat([_manifest([(28, 28)] * 3), _manifest([(512, 512)] * 5, "test")])
    assert input_size(PreprocessParams(), manifest).image_size == 32
    off = PreprocessParams(follow_source_size=False)
    assert input_size(off, manifest) == off
    unknown = _manifest([(28, 28)]).assign(rows=None, columns=None)
    assert input_size(PreprocessParams(), unknown).image_size == 64


def test_a_28_px_archive_is_trained_and_served_at_32_px(tmp_path: Path) -> None:
    """Ingest a MedMNIST-style archive, preprocess it with the defaults: the arrays, their
    meta.json and the model spec built from it all say 32, and the serving path, given the
    spec's params, turns an ingested file into the same array the training set holds."""
    npz = make_npz(tmp_path / "tiny.npz")
    data = DataParams(source="tiny.npz", class_names=["normal", "pneumonia"])
    config = IngestConfig(data, IngestParams(workers=1), DeidParams(), PreprocessParams())
    run_ingest(config, npz, tmp_path / "ingested", KEY)

    run_preprocess(PreprocessParams(), tmp_path / "ingested", tmp_path / "arrays")
    meta = read_meta(tmp_path / "arrays")
    assert meta.shape == (1, 32, 32) and meta.preprocess.image_size == 32
    x, _ = load_split(tmp_path / "arrays", "train")
    assert x.shape == (SIZES["train"], 1, 32, 32)

    spec = ModelSpec(
        "smallcnn", 1, 2, 8, 0.0, ["normal", "pneumonia"], meta.preprocess.model_dump()
    )
    manifest = pd.read_csv(tmp_path / "ingested" / "manifest.csv")
    first = manifest[manifest["split"] == "train"].sort_values("image_id").iloc[0]
    served = preprocess_file(tmp_path / "ingested" / first["file"], spec.preprocess_params)
    np.testing.assert_array_equal(served, x[0])
    assert spec.build().eval()(torch.from_numpy(served)[None]).shape == (1, 2)

    run_preprocess(
        PreprocessParams(follow_source_size=False), tmp_path / "ingested", tmp_path / "at64"
    )
    assert read_meta(tmp_path / "at64").shape == (1, 64, 64)
