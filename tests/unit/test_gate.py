import json

import pytest

from medflow.config import GateParams
from medflow.errors import GateFailed
from medflow.evaluation.gate import NO_CHAMPION, all_rules, judge, run_gate
from medflow.handoffs import GateReport, HandoffError
from tests.helpers.handoffs import metrics_values

GOOD = metrics_values(auroc_ci_low=0.9)


def _write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def test_passing_model_writes_passed_report(tmp_path):
    m = _write(tmp_path, "m.json", GOOD)
    result = run_gate(GateParams(), m, tmp_path / "gate.json")
    assert result.passed
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["passed"] is True and report["decision"] == "accepted"
    assert report["champion"]["status"] == NO_CHAMPION
    assert all(r["passed"] for r in report["rules"])


def test_each_failed_rule_is_named_with_its_values(tmp_path):
    bad = {**GOOD, "auroc": 0.6, "specificity": 0.2}
    m = _write(tmp_path, "m.json", bad)
    with pytest.raises(GateFailed) as err:
        run_gate(GateParams(min_auroc=0.85), m, tmp_path / "gate.json")
    assert "auroc = 0.6000 is below gate.min_auroc = 0.85" in str(err.value)
    assert "specificity" in str(err.value) and "sensitivity" not in str(err.value)
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["passed"] is False and len(report["failures"]) == 2
    failed = {r["rule"]: r for r in report["rules"] if not r["passed"]}
    assert failed["gate.min_auroc"]["observed"] == 0.6
    assert failed["gate.min_auroc"]["threshold"] == 0.85


def test_missing_or_nan_metric_fails():
    assert judge(GateParams(), {k: v for k, v in GOOD.items() if k != "auroc"})
    assert judge(GateParams(), {**GOOD, "auroc": float("nan")})


def test_interval_and_calibration_rules():
    params = GateParams(min_auroc_ci_low=0.92, max_ece=0.02)
    failures = judge(params, GOOD)
    assert failures == [
        "auroc_ci_low = 0.9000 is below gate.min_auroc_ci_low = 0.92",
        "ece = 0.0300 is above gate.max_ece = 0.02",
    ]


def test_subgroup_rule_judges_only_subgroups_that_are_not_small():
    subgroups = {
        "site": {
            "A": {"n": 200, "small": 0, "auroc": 0.91},
            "B": {"n": 150, "small": 0, "auroc": 0.70},
            "C": {"n": 5, "small": 1, "auroc": 0.10},  # reported, not gated
        }
    }
    failures = judge(GateParams(min_subgroup_auroc=0.8), GOOD, subgroups)
    assert failures == ["site=B (n=150) auroc = 0.7000 is below gate.min_subgroup_auroc = 0.8"]
    assert judge(GateParams(min_subgroup_auroc=0.0), GOOD, subgroups) == []  # 0: off


def test_change_rules_against_the_champion():
    params = GateParams(max_worse_than_champion={"auroc": 0.02, "ece": 0.01})
    champion = {**GOOD, "auroc": 0.98, "ece": 0.01}
    failures = judge(params, GOOD, champion=champion)
    assert len(failures) == 2
    assert "auroc = 0.9500 is 0.0300 below the champion's 0.9800" in failures[0]
    assert "gate.max_worse_than_champion.auroc = 0.02" in failures[0]
    assert "ece = 0.0300 is 0.0200 above the champion's 0.0100" in failures[1]
    # within the allowed delta, and better than the champion, both pass
    assert judge(params, GOOD, champion={**GOOD, "auroc": 0.96, "ece": 0.05}) == []


def test_no_champion_is_judged_by_value_rules_alone(tmp_path):
    params = GateParams(max_worse_than_champion={"auroc": 0.0})
    rules = all_rules(params, GOOD, champion=None)
    assert not any("champion" in r.rule for r in rules)
    m = _write(tmp_path, "m.json", GOOD)
    run_gate(params, m, tmp_path / "gate.json", baseline_file=tmp_path / "none/baseline.json")
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["champion"]["status"] == "no champion" and report["passed"]


def test_baseline_file_is_read_and_reported(tmp_path):
    m = _write(tmp_path, "m.json", GOOD)
    baseline = {
        "status": "compared",
        "reason": "champion m:1 scored on this run's test split (40 images)",
        "dataset": {"key": "synthetic-0123abcd"},
        "champion": {"model_tag": "m:1"},
        "metrics": {**GOOD, "auroc": 0.99},
        "evaluated_on": {
            "split": "test",
            "n_test": 40,
            "data_hash": "feed",
            "inputs": "the test arrays",
            "preprocess": {"image_size": 64},
        },
    }
    # the champion's metrics carry no validation figures of the candidate
    baseline["metrics"] = {
        k: v
        for k, v in baseline["metrics"].items()
        if k not in ("val_sensitivity", "val_specificity", "n_test_patients", "n_test_positive")
    }
    champ = _write(tmp_path, "baseline.json", baseline)
    params = GateParams(max_worse_than_champion={"auroc": 0.01})
    with pytest.raises(GateFailed, match="below the champion's 0.9900"):
        run_gate(params, m, tmp_path / "gate.json", baseline_file=champ)
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["champion"]["status"] == "compared" and report["champion"]["same_split"]
    assert report["champion"]["metrics"]["auroc"] == 0.99
    assert report["champion"]["dataset"] == "synthetic-0123abcd"
    assert report["champion"]["model_tag"] == "m:1"
    assert GateReport.read(tmp_path / "gate.json").champion.evaluated_on.n_test == 40


def test_a_metrics_file_without_a_metric_is_refused_naming_it(tmp_path):
    m = _write(tmp_path, "m.json", metrics_values(auroc=None))
    with pytest.raises(
        HandoffError, match=r"m\.json is not a valid Metrics \(auroc: Field required"
    ):
        run_gate(GateParams(), m, tmp_path / "gate.json")
    assert not (tmp_path / "gate.json").exists()


def test_a_compared_baseline_without_metrics_is_refused(tmp_path):
    m = _write(tmp_path, "m.json", GOOD)
    baseline = _write(tmp_path, "baseline.json", {"status": "compared", "reason": "r"})
    with pytest.raises(HandoffError, match="baseline.json is not a valid Baseline"):
        run_gate(GateParams(), m, tmp_path / "gate.json", baseline_file=baseline)


def test_unknown_champion_metric_is_a_config_error():
    with pytest.raises(ValueError, match="unknown metric 'kappa'"):
        GateParams(max_worse_than_champion={"kappa": 0.1})


def test_model_card_is_written_when_the_gate_refuses(tmp_path):
    m = _write(tmp_path, "m.json", {**GOOD, "auroc": 0.5})
    with pytest.raises(GateFailed):
        run_gate(GateParams(), m, tmp_path / "gate.json", card_file=tmp_path / "card.md")
    card = (tmp_path / "card.md").read_text()
    assert "Gate decision: REFUSED" in card
    assert "auroc = 0.5000 is below gate.min_auroc = 0.85" in card
