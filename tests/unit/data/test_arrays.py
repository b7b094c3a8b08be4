"""The preprocessed arrays: written and read by medflow.data.arrays only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medflow.config import PreprocessParams
from medflow.data.arrays import (
    META_FILE,
    ArraysMeta,
    load_ids,
    load_labels,
    load_split,
    open_images,
    read_meta,
    write_images,
    write_labels,
)
from medflow.handoffs import HandoffError

META = ArraysMeta(
    counts={"train": 3, "val": 0, "test": 2},
    data_hash="feed",
    preprocess=PreprocessParams(image_size=8, windows={"ct": {"center": 40, "width": 400}}),
    shape=(1, 8, 8),
)


def test_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((3, 1, 8, 8), dtype=np.float32)
    mapped = open_images(tmp_path, "train", 3, (1, 8, 8))
    mapped[:] = x
    mapped.flush()
    del mapped
    write_images(tmp_path, "test", x[:2])
    write_labels(tmp_path, "train", [0, 1, 1], ["i0", "i1", "i2"])
    write_labels(tmp_path, "test", np.array([1, 0]), np.array(["i3", "i4"]))
    META.write(tmp_path / META_FILE)

    images, labels = load_split(tmp_path, "train")
    assert isinstance(images, np.memmap) and images.dtype == np.float32
    np.testing.assert_array_equal(images, x)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 1]
    assert load_ids(tmp_path, "train").tolist() == ["i0", "i1", "i2"]
    np.testing.assert_array_equal(load_split(tmp_path, "test")[0], x[:2])
    assert load_labels(tmp_path, "test").tolist() == [1, 0]
    assert read_meta(tmp_path) == META
    raw = json.loads((tmp_path / META_FILE).read_text())
    assert sorted(raw) == ["counts", "data_hash", "preprocess", "segments", "shape"]
    assert raw["segments"] == 0
    assert raw["shape"] == [1, 8, 8] and raw["preprocess"]["windows"]["CT"]["width"] == 400


def test_a_missing_split_says_to_run_preprocess(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no val_x\.npy in .*run the preprocess stage"):
        load_split(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match=r"meta\.json.*run the preprocess stage"):
        read_meta(tmp_path)


def test_a_malformed_meta_names_the_file_and_field(tmp_path: Path) -> None:
    raw = META.model_dump()
    raw["shape"] = [8, 8]
    del raw["data_hash"]
    (tmp_path / META_FILE).write_text(json.dumps(raw))
    with pytest.raises(HandoffError) as err:
        read_meta(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / META_FILE} is not a valid ArraysMeta (")
    assert "data_hash: Field required" in message and "shape.2: " in message
