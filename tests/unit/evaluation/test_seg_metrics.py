"""Segmentation metrics of hand-made masks, computed by hand (real MONAI and scipy)."""

import math

import numpy as np
import pytest

from medflow.config import EvaluateParams
from medflow.evaluation.seg_metrics import (
    lesion_matches,
    overlap_scores,
    per_segment,
    point_scores,
    score_images,
    summarize,
)


def _masks(n: int, k: int = 1, side: int = 16) -> np.ndarray:
    return np.zeros((n, k, side, side), dtype=np.uint8)


def test_dice_iou_hd95_of_shifted_squares_and_single_pixels():
    truth, pred = _masks(2), _masks(2)
    # two 4x4 squares, the prediction 2 columns to the right: 8 of 16 pixels shared
    truth[0, 0, 4:8, 4:8] = 1
    pred[0, 0, 4:8, 6:10] = 1
    # one pixel each, 3 columns apart
    truth[1, 0, 5, 2] = 1
    pred[1, 0, 5, 5] = 1
    dice, iou, hd95 = overlap_scores(pred, truth, np.ones(2))
    assert dice[0, 0] == pytest.approx(2 * 8 / (16 + 16))
    assert iou[0, 0] == pytest.approx(8 / 24)
    # edge-to-edge distances of the squares are 0, 1 or 2 pixels: the 95th percentile is 2
    assert hd95[0, 0] == pytest.approx(2.0)
    assert dice[1, 0] == 0 and iou[1, 0] == 0
    assert hd95[1, 0] == pytest.approx(3.0)


def test_hd95_scales_with_each_images_pixel_spacing():
    truth, pred = _masks(2), _masks(2)
    truth[:, 0, 5, 2] = 1
    pred[:, 0, 5, 5] = 1
    _, _, hd95 = overlap_scores(pred, truth, np.array([0.5, 2.0]))
    assert hd95[:, 0] == pytest.approx([1.5, 6.0])


def test_empty_masks_score_by_rule():
    truth, pred = _masks(3), _masks(3)
    # 0: both empty; 1: a prediction where there is nothing; 2: a missed lesion
    pred[1, 0, 2:4, 2:4] = 1
    truth[2, 0, 2:4, 2:4] = 1
    dice, iou, hd95 = overlap_scores(pred, truth, np.array([1.0, 0.5, 2.0]))
    assert dice[:, 0].tolist() == [1.0, 0.0, 0.0]
    assert iou[:, 0].tolist() == [1.0, 0.0, 0.0]
    diagonal = 16 * math.sqrt(2)
    assert hd95[:, 0] == pytest.approx([0.0, 0.5 * diagonal, 2.0 * diagonal])


def test_segments_are_scored_apart():
    truth, pred = _masks(1, k=2), _masks(1, k=2)
    truth[0, 0, 2:6, 2:6] = pred[0, 0, 2:6, 2:6] = 1  # perfect
    truth[0, 1, 8:12, 8:12] = 1  # missed
    dice, _, _ = overlap_scores(pred, truth, np.ones(1))
    assert dice.tolist() == [[1.0, 0.0]]


def test_bad_shapes_and_spacing_are_errors():
    with pytest.raises(ValueError, match="differ"):
        overlap_scores(_masks(1), _masks(1, side=8), np.ones(1))
    with pytest.raises(ValueError, match=r"\(N, K, S, S\)"):
        overlap_scores(np.zeros((16, 16)), np.zeros((16, 16)), np.ones(1))
    with pytest.raises(ValueError, match="positive numbers"):
        overlap_scores(_masks(2), _masks(2), np.array([1.0, float("nan")]))


def _lesions() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((20, 20), dtype=np.uint8)
    pred = np.zeros_like(truth)
    truth[2:6, 2:6] = 1  # A: 16 px
    truth[12:16, 12:16] = 1  # B: 16 px
    pred[2:6, 3:7] = 1  # shares 12 px with A: IoU 12 / 20 = 0.6
    pred[15:19, 15:19] = 1  # shares 1 px with B: IoU 1 / 31
    pred[10, 2] = 1  # touches nothing
    return truth, pred


def test_lesions_are_detected_at_the_minimum_iou():
    truth, pred = _lesions()
    # A found; B's only overlap is below 0.1, so B is missed and that component is false
    assert lesion_matches(truth, pred, 0.1) == (2, 1, 3, 2)
    # at a lower minimum the corner overlap finds B too
    assert lesion_matches(truth, pred, 0.03) == (2, 2, 3, 1)
    # nothing predicted: every lesion missed, no false positive
    assert lesion_matches(truth, np.zeros_like(pred), 0.1) == (2, 0, 0, 0)
    assert lesion_matches(np.zeros_like(truth), pred, 0.1) == (0, 0, 3, 3)


def test_pixels_touching_only_at_a_corner_are_two_lesions():
    truth = np.zeros((6, 6), dtype=np.uint8)
    truth[1, 1] = truth[2, 2] = 1
    assert lesion_matches(truth, truth, 0.5) == (2, 2, 2, 0)
    truth[1, 2] = 1  # now joined by an edge
    assert lesion_matches(truth, truth, 0.5) == (1, 1, 1, 0)


def test_pooled_detection_and_false_positives_per_image():
    truth, pred = _lesions()
    t, p = _masks(2, side=20), _masks(2, side=20)
    t[0, 0], p[0, 0] = truth, pred
    t[1, 0, 2:6, 2:6] = p[1, 0, 2:6, 2:6] = 1  # a perfect second image
    scores = score_images(p, t, np.ones(2), 0.1)
    assert scores.true_lesions[:, 0].tolist() == [2, 1]
    assert scores.detected[:, 0].tolist() == [1, 1]
    assert scores.false_positives[:, 0].tolist() == [2, 0]
    assert scores.true_area[:, 0].tolist() == [32, 16]
    assert scores.pred_area[:, 0].tolist() == [16 + 16 + 1, 16]
    one_by_one = score_images(p, t, np.ones(2), 0.1, chunk=1)
    assert one_by_one.dice.tolist() == scores.dice.tolist()
    assert one_by_one.subset(np.array([False, True])).dice.tolist() == [[1.0]]
    point = point_scores(scores)
    assert point["detection_sensitivity"] == pytest.approx(2 / 3)
    assert point["false_positives_per_image"] == pytest.approx(1.0)
    assert point["dice"] == pytest.approx(np.mean(scores.dice))
    assert per_segment(scores, ["lesion"])["lesion"]["dice"] == pytest.approx(point["dice"])


def test_no_true_lesion_leaves_detection_undefined():
    scores = score_images(_masks(2), _masks(2), np.ones(2), 0.1)
    point = point_scores(scores)
    assert math.isnan(point["detection_sensitivity"])
    assert point["false_positives_per_image"] == 0 and point["dice"] == 1


def test_intervals_resample_patients():
    truth, pred = _masks(4), _masks(4)
    truth[:, 0, 4:8, 4:8] = 1
    pred[:2, 0, 4:8, 4:8] = 1  # images 0 and 1 perfect, 2 and 3 missed
    scores = score_images(pred, truth, np.ones(4), 0.1)
    params = EvaluateParams(n_bootstrap=200, seed=1)
    # one patient: every resample is the whole split, the interval collapses on the mean
    one = summarize(scores, params, np.array(["p"] * 4))
    assert one["dice"] == pytest.approx(0.5)
    assert one["dice_ci_low"] == pytest.approx(0.5) and one["dice_ci_high"] == pytest.approx(0.5)
    # a patient per outcome (p1: perfect images, p2: missed ones): resamples of two patients
    # give 0, 0.5 or 1
    two = summarize(scores, params, np.array(["p1", "p1", "p2", "p2"]))
    assert two["dice_ci_low"] == 0.0 and two["dice_ci_high"] == 1.0
    assert {"iou_ci_low", "hd95_ci_high"} <= set(two)
    # no resampling: the intervals are undefined, the means are not
    none = summarize(scores, EvaluateParams(n_bootstrap=0), None)
    assert math.isnan(none["dice_ci_low"]) and none["dice"] == pytest.approx(0.5)


def test_overlay_cases_skip_images_empty_in_truth_and_prediction() -> None:
    from medflow.evaluation.overlays import pick_cases

    dice = np.array([1.0, 0.9, 1.0, 0.2, 0.6, 1.0])
    shown = np.array([False, True, False, True, True, False])  # the 1.0s are empty/empty
    assert pick_cases(dice, shown) == {"best": 1, "median": 4, "worst": 3}
    # nothing to show anywhere: all images are candidates
    assert pick_cases(dice, np.zeros(6, dtype=bool))["best"] == 0
    assert pick_cases(np.array([])) == {}
