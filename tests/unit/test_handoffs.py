"""The hand-off files: each model writes what it reads back, and a bad file is refused with
its path and the fields at fault."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from medflow.config import HIGHER_IS_BETTER, LOWER_IS_BETTER, EvaluateParams, PreprocessParams
from medflow.handoffs import (
    COMPARED,
    METRICS,
    NO_CHAMPION,
    SEGMENTATION_METRICS,
    Baseline,
    ChampionComparison,
    EvaluationContext,
    GateReport,
    GateRule,
    HandoffError,
    Metrics,
    ScoredMetrics,
)
from tests.helpers.handoffs import gate_report, metrics, metrics_values


def _scored() -> ScoredMetrics:
    keep = set(ScoredMetrics.model_fields)
    return ScoredMetrics(**{k: v for k, v in metrics_values().items() if k in keep})


def _baseline() -> Baseline:
    return Baseline.model_validate(
        {
            "status": COMPARED,
            "reason": "champion m:1 scored on this run's test split",
            "dataset": {"key": "synthetic-0123abcd", "source": "synthetic", "class_names": ["a"]},
            "champion": {"model_tag": "m:1", "bento_tag": "b:1", "promoted_by": "package"},
            "metrics": _scored(),
            "evaluated_on": {
                "split": "test",
                "n_test": 120,
                "data_hash": "feed",
                "inputs": "the test arrays",
                "preprocess": PreprocessParams(),
            },
        }
    )


def _context() -> EvaluationContext:
    return EvaluationContext.model_validate(
        {
            "params": EvaluateParams(),
            "threshold": {"policy": "youden", "value": 0.4, "chosen_on": "val", "applies": "p"},
            "bootstrap": {"unit": "patient", "n": 10, "level": 0.95, "seed": 0},
            "subgroups": {"reported": ["site"], "missing": ["sex"]},
            "data": {
                "data_hash": "feed",
                "counts": {"test": 2},
                "class_counts": {"test": {"a": 1, "b": 1}},
                "preprocess": PreprocessParams(),
            },
            "model": {
                "architecture": "smallcnn",
                "class_names": ["a", "b"],
                "num_classes": 2,
                "provenance": {"epochs_run": 3},
            },
            "plots": {"roc": "plots/roc.png"},
            "evaluated_with": {"git_revision": "abc", "library_versions": {"torch": "2"}},
        }
    )


def _gate() -> GateReport:
    rule = GateRule(
        rule="gate.min_auroc",
        metric="auroc",
        observed=float("nan"),
        threshold=0.85,
        op=">=",
        passed=False,
        message="auroc = nan is not defined",
    )
    b = _baseline()
    champion = ChampionComparison(
        status=b.status,
        reason=b.reason,
        same_split=True,
        dataset=b.dataset.key,
        model_tag="m:1",
        evaluated_on=b.evaluated_on,
        metrics=b.metrics,
        file="reports/baseline.json",
    )
    report = gate_report(metrics(auroc=float("nan")), [rule.message])
    return report.model_copy(update={"rules": [rule], "champion": champion})


ROUND_TRIPS = {
    "metrics.json": lambda: metrics(specificity=float("nan")),
    "metrics.json of three classes": lambda: metrics(n_test_positive=None),
    "baseline.json": _baseline,
    "baseline.json without champion": lambda: Baseline(status=NO_CHAMPION, reason="first"),
    "evaluation.json": _context,
    "gate.json": _gate,
}


def _same(a: object, b: object) -> bool:
    # NaN != NaN: compare the JSON texts instead
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_round_trip(tmp_path: Path, name: str) -> None:
    model = ROUND_TRIPS[name]()
    path = tmp_path / "f.json"
    model.write(path)
    again = type(model).read(path)
    assert _same(again.model_dump(), model.model_dump())
    # and the file is the model's dump, nothing more
    assert _same(json.loads(path.read_text()), model.model_dump())


def test_metrics_file_is_flat_numbers_with_every_metric_and_interval(tmp_path: Path) -> None:
    metrics(specificity=float("nan")).write(tmp_path / "metrics.json")
    text = (tmp_path / "metrics.json").read_text()
    raw = json.loads(text)
    assert "NaN" in text and math.isnan(raw["specificity"])  # as DVC and json read it
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw.values())
    for name in METRICS:
        assert {name, f"{name}_ci_low", f"{name}_ci_high"} <= set(raw)
    metrics(n_test_positive=None).write(tmp_path / "three.json")
    assert "n_test_positive" not in json.loads((tmp_path / "three.json").read_text())


def test_the_metric_names_are_the_gate_params_metric_names() -> None:
    detection = ("detection_sensitivity", "false_positives_per_image")
    assert sorted(METRICS + SEGMENTATION_METRICS + detection) == sorted(
        HIGHER_IS_BETTER + LOWER_IS_BETTER
    )
    assert metrics().interval("ece") == (0.03, pytest.approx(-0.02), 0.08)
    with pytest.raises(KeyError, match="dice"):
        metrics().interval("dice")


def test_baseline_file_keeps_its_keys(tmp_path: Path) -> None:
    Baseline(status=NO_CHAMPION, reason="first").write(tmp_path / "baseline.json")
    raw = json.loads((tmp_path / "baseline.json").read_text())
    assert raw == {
        "status": NO_CHAMPION,
        "reason": "first",
        "dataset": None,
        "champion": None,
        "metrics": None,
        "evaluated_on": {},
        "same_split": False,
    }


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"auroc": "0.9"}, ["auroc"]),
        ({"auroc": True}, ["auroc"]),
        ({"n_test": 1.5}, ["n_test"]),
        ({"auroc": None, "ece": None}, ["auroc", "ece"]),
        ({"dice": 0.8}, ["dice"]),  # unknown keys are refused: a typo must not pass
    ],
)
def test_a_malformed_metrics_file_names_the_file_and_every_field(
    tmp_path: Path, change: dict, fields: list[str]
) -> None:
    raw = metrics_values()
    raw.update({k: v for k, v in change.items() if v is not None})
    for k in (k for k, v in change.items() if v is None):
        del raw[k]
    path = tmp_path / "reports" / "metrics.json"
    path.parent.mkdir()
    path.write_text(json.dumps(raw))
    with pytest.raises(HandoffError) as err:
        Metrics.read(path)
    message = str(err.value)
    assert message.startswith(f"{path} is not a valid Metrics (")
    for field in fields:
        assert f"{field}: " in message
    assert "re-run the evaluate stage" in message


def test_a_malformed_nested_field_is_named_by_its_path(tmp_path: Path) -> None:
    raw = _gate().model_dump()
    raw["rules"][0]["op"] = ">"
    raw["champion"]["metrics"]["ece"] = "low"
    (tmp_path / "gate.json").write_text(json.dumps(raw))
    with pytest.raises(HandoffError) as err:
        GateReport.read(tmp_path / "gate.json")
    assert "rules.0.op: " in str(err.value) and "champion.metrics.ece: " in str(err.value)
    assert "re-run the gate stage" in str(err.value)


def test_not_json_and_no_file(tmp_path: Path) -> None:
    (tmp_path / "evaluation.json").write_text('{"params": ')
    with pytest.raises(HandoffError, match=r"evaluation\.json is not valid JSON"):
        EvaluationContext.read(tmp_path / "evaluation.json")
    with pytest.raises(FileNotFoundError, match=r"no gate\.json at .*: re-run the gate stage"):
        GateReport.read(tmp_path / "gate.json")


def test_values_that_contradict_each_other_are_refused() -> None:
    with pytest.raises(ValueError, match="exactly when status is compared"):
        Baseline(status=COMPARED, reason="r")  # compared, but with no metrics
    with pytest.raises(ValueError, match="exactly when status is compared"):
        Baseline(status=NO_CHAMPION, reason="r", metrics=_scored())
    with pytest.raises(ValueError, match="same_split"):
        Baseline.model_validate({"status": NO_CHAMPION, "reason": "r", "same_split": True})
    with pytest.raises(ValueError, match="contradicts"):
        GateReport.model_validate({**gate_report(metrics()).model_dump(), "decision": "refused"})
