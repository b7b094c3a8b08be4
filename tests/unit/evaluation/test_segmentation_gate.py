"""The gate's rules for segmentation metrics, and a classifier's gate untouched by them."""

import json
import logging

import pytest

from medflow.config import GateParams
from medflow.errors import GateFailed
from medflow.evaluation.gate import all_rules, judge, run_gate
from medflow.handoffs import GateReport, SegmentationMetrics
from tests.helpers.handoffs import metrics_values


def seg_values(**overrides):
    """metrics.json of a good segmentation model (every default gate rule passes)."""
    out = {
        "task": "segmentation",
        "dice": 0.86,
        "dice_ci_low": 0.82,
        "dice_ci_high": 0.9,
        "iou": 0.76,
        "iou_ci_low": 0.7,
        "iou_ci_high": 0.8,
        "hd95": 4.0,
        "hd95_ci_low": 3.0,
        "hd95_ci_high": 5.5,
        "detection_sensitivity": 0.9,
        "false_positives_per_image": 0.2,
        "per_segment": {"lesion": {"dice": 0.86, "iou": 0.76, "hd95": 4.0}},
        "threshold": 0.5,
        "n_images": 60,
        "n_patients": 30,
        "n_lesions": 45,
    }
    out.update(overrides)
    return out


def test_value_rules_on_dice_its_interval_and_hd95():
    assert judge(GateParams(), seg_values()) == []
    failures = judge(GateParams(), seg_values(dice=0.75, dice_ci_low=0.6, hd95=12.5))
    assert failures == [
        "dice = 0.7500 is below gate.min_dice = 0.8",
        "dice_ci_low = 0.6000 is below gate.min_dice_ci_low = 0.7",
        "hd95 = 12.5000 is above gate.max_hd95 = 10.0",
    ]
    # no classification rule judges a segmentation model, nor its subgroups' AUROC
    rules = all_rules(GateParams(), seg_values(), {"site": {"A": {"n": 90, "small": 0}}})
    assert [r.rule for r in rules] == ["gate.min_dice", "gate.min_dice_ci_low", "gate.max_hd95"]


def test_change_rules_for_the_metrics_both_have():
    params = GateParams(max_worse_than_champion={"dice": 0.02, "hd95": 2.0, "auroc": 0.02})
    champion = seg_values(dice=0.9, hd95=1.5)
    failures = judge(params, seg_values(), champion=champion)
    assert failures == [
        "dice = 0.8600 is 0.0400 below the champion's 0.9000"
        " (gate.max_worse_than_champion.dice = 0.02)",
        "hd95 = 4.0000 is 2.5000 above the champion's 1.5000"
        " (gate.max_worse_than_champion.hd95 = 2.0)",
    ]
    # auroc: the candidate has none, so it is no rule (neither failed nor missing)
    rules = all_rules(params, seg_values(), champion=champion)
    assert not any("auroc" in r.rule for r in rules)
    # within the deltas, both pass
    assert judge(params, seg_values(), champion=seg_values(dice=0.87, hd95=3.0)) == []


def test_a_classifiers_gate_does_not_mention_dice(tmp_path, caplog):
    # params.yaml's defaults carry dice and hd95 among the change rules
    params = GateParams()
    assert {"dice", "hd95"} <= set(params.max_worse_than_champion)
    good = metrics_values(auroc_ci_low=0.9)
    m = tmp_path / "metrics.json"
    m.write_text(json.dumps(good))
    champion = {
        k: v
        for k, v in good.items()
        if k not in ("val_sensitivity", "val_specificity", "n_test_patients", "n_test_positive")
    }
    baseline = {
        "status": "compared",
        "reason": "champion m:1 on this split",
        "champion": {"model_tag": "m:1"},
        "metrics": champion,
        "evaluated_on": {
            "split": "test",
            "n_test": 120,
            "data_hash": "feed",
            "inputs": "the test arrays",
            "preprocess": {"image_size": 64},
        },
    }
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    with caplog.at_level(logging.INFO, logger="medflow"):
        result = run_gate(
            params,
            m,
            tmp_path / "gate.json",
            baseline_file=tmp_path / "baseline.json",
            card_file=tmp_path / "card.md",
            task="classification",
        )
    assert result.passed
    report = GateReport.read(tmp_path / "gate.json")
    mentioned = [r.rule + r.metric + r.message for r in report.rules] + report.failures
    assert not any("dice" in t or "hd95" in t for t in mentioned)
    assert [r.metric for r in report.rules if "champion" in r.rule] == [
        "auroc",
        "ece",
        "sensitivity",
        "specificity",
    ]
    assert not any("dice" in rec.getMessage() for rec in caplog.records)
    assert not any(rec.levelno >= logging.WARNING for rec in caplog.records)
    # the card: only its dump of the gate params names them
    card = (tmp_path / "card.md").read_text()
    assert "dice" not in card.split("## Parameters")[0].lower()


def test_a_segmentation_metrics_file_is_judged_and_written(tmp_path):
    m = tmp_path / "metrics.json"
    m.write_text(json.dumps(seg_values(hd95=11.0)))
    with pytest.raises(GateFailed, match="hd95 = 11.0000 is above gate.max_hd95 = 10.0"):
        run_gate(GateParams(), m, tmp_path / "gate.json", card_file=tmp_path / "card.md")
    report = GateReport.read(tmp_path / "gate.json")
    assert isinstance(report.metrics, SegmentationMetrics) and report.decision == "refused"
    assert report.metrics.per_segment["lesion"].dice == 0.86
    card = (tmp_path / "card.md").read_text()
    assert card.startswith("# Model card: lesion segmentation")
    assert "| Dice | 0.860 [0.820, 0.900] |" in card and "HD95 in mm or pixels" in card
    assert "Gate decision: REFUSED" in card and "hd95 = 11.0000 is above" in card


def test_metrics_of_the_other_task_are_an_error(tmp_path):
    m = tmp_path / "metrics.json"
    m.write_text(json.dumps(seg_values()))
    with pytest.raises(ValueError, match="data.task is classification but .* segmentation"):
        run_gate(GateParams(), m, tmp_path / "gate.json", task="classification")
