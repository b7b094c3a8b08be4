import json

import pytest

from medflow.config import GateParams
from medflow.errors import GateFailed
from medflow.gate import judge, run_gate

GOOD = {"auroc": 0.95, "sensitivity": 0.9, "specificity": 0.85}


def test_passing_model_writes_passed_report(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(GOOD))
    result = run_gate(GateParams(), tmp_path / "m.json", tmp_path / "gate.json")
    assert result.passed
    assert json.loads((tmp_path / "gate.json").read_text())["passed"] is True


def test_each_failed_rule_is_named_with_its_values(tmp_path):
    bad = {"auroc": 0.6, "sensitivity": 0.9, "specificity": 0.2}
    (tmp_path / "m.json").write_text(json.dumps(bad))
    with pytest.raises(GateFailed) as err:
        run_gate(GateParams(min_auroc=0.85), tmp_path / "m.json", tmp_path / "gate.json")
    assert "auroc = 0.6000 is below gate.min_auroc = 0.85" in str(err.value)
    assert "specificity" in str(err.value) and "sensitivity" not in str(err.value)
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["passed"] is False and len(report["failures"]) == 2


def test_missing_or_nan_metric_fails():
    assert judge(GateParams(), {"sensitivity": 1.0, "specificity": 1.0})
    assert judge(GateParams(), {**GOOD, "auroc": float("nan")})
