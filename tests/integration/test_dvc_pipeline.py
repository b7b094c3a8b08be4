"""A real `dvc repro` of the whole pipeline in a temporary copy of the project."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medflow.handoffs import GateReport, Metrics
from tests.helpers.pipeline_copy import TINY_PARAMS, clone, run, set_params
from tests.helpers.stages import always_changed, dvc_stages, ran_stages, stale_stages


@pytest.fixture
def repo(reproduced: tuple[Path, str], tmp_path: Path) -> Path:
    """A private clone of the session's `dvc repro` (conftest.py): the test may change it."""
    src, _ = reproduced
    return clone(src, tmp_path / "repo")


def test_repro_runs_every_stage_and_builds_a_bento(reproduced: tuple[Path, str], tmp_path: Path):
    src, out = reproduced  # only read
    assert ran_stages(out) == set(dvc_stages()) - always_changed()
    assert all(f"Running stage '{name}'" in out for name in always_changed())
    bento = json.loads((src / "reports/bento.json").read_text())
    info = run(["bentoml", "get", bento["bento_tag"], "-o", "json"], tmp_path)
    assert bento["bento_tag"].split(":")[0] in info.stdout
    assert GateReport.read(src / "reports/gate.json").passed is True


def test_metrics_are_dvc_metrics(repo: Path):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    metrics = next(iter(shown.values()))["data"]["reports/metrics.json"]["data"]
    assert set(metrics) >= {"auroc", "accuracy", "sensitivity", "specificity"}
    # the tiny model must have learned something real, not just run
    assert metrics["auroc"] >= TINY_PARAMS["gate"]["min_auroc"], metrics


def test_second_repro_runs_nothing(repo: Path):
    out = run(["dvc", "repro"], repo).stdout
    assert ran_stages(out) == set(), out
    assert stale_stages(repo) == {}


def test_changing_one_param_reruns_only_its_stages(repo: Path):
    set_params(repo, {"evaluate": {"threshold": 0.45}})
    out = run(["dvc", "repro"], repo).stdout
    ran = ran_stages(out)
    assert "evaluate" in ran
    assert ran <= {"evaluate", "gate", "package"}, ran


def test_gate_refusal_stops_before_packaging(repo: Path):
    before = (repo / "reports/bento.json").read_text()
    metrics = Metrics.read(repo / "reports/metrics.json")
    # demand more than the model achieved on a metric it did not max out
    metric = next(m for m in ("sensitivity", "specificity", "auroc") if getattr(metrics, m) < 1.0)
    set_params(repo, {"gate": {f"min_{metric}": min(1.0, getattr(metrics, metric) + 0.01)}})
    proc = run(["dvc", "repro"], repo, check=False)
    assert proc.returncode != 0
    assert "refused by the evaluation gate" in proc.stderr + proc.stdout
    assert f"{metric} = " in proc.stderr + proc.stdout
    assert "package" not in ran_stages(proc.stdout)
    assert (repo / "reports/bento.json").read_text() == before
