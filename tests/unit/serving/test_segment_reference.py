"""Infra-validation of a /segment answer (medflow.registry.infra_validation.check_segmentation):
the model tag, one segment per name, areas that match the masks, masks that match the stored
reference."""

from __future__ import annotations

import numpy as np

from medflow.registry.infra_validation import check_segmentation, dice
from medflow.serving.segment import segments

NAMES = ["lesion"]


def _body(masks: np.ndarray, tag: str = "m:1") -> dict:
    return {
        "model_tag": tag,
        "segments": [s.model_dump() for s in segments(masks, NAMES, None)],
    }


def _masks() -> np.ndarray:
    masks = np.zeros((1, 40, 50), np.uint8)
    masks[0, 10:30, 10:30] = 1
    return masks


def test_an_answer_matching_the_reference_passes() -> None:
    masks = _masks()
    assert check_segmentation(200, _body(masks), "m:1", NAMES, masks) == []
    assert check_segmentation(200, _body(masks), "m:1", NAMES) == []  # shape only


def test_wrong_answers_are_named() -> None:
    masks = _masks()
    assert "HTTP 500" in check_segmentation(500, "boom", "m:1", NAMES)[0]
    assert "expected 'm:1'" in check_segmentation(200, _body(masks, "m:2"), "m:1", NAMES)[0]
    (names,) = check_segmentation(200, _body(masks), "m:1", ["lesion", "cyst"])
    assert "one per segment" in names
    shifted = np.roll(masks, 5, axis=2)  # Dice 0.75
    (differs,) = check_segmentation(200, _body(shifted), "m:1", NAMES, masks)
    assert "Dice 0.7500" in differs
    lying = _body(masks)
    lying["segments"][0]["area_px"] = 7
    (area,) = check_segmentation(200, lying, "m:1", NAMES, masks)
    assert "area_px 7" in area


def test_dice() -> None:
    a = _masks()[0]
    assert dice(a, a) == 1.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0  # both empty: agreement
    assert dice(a, np.zeros_like(a)) == 0.0
