"""A real `dvc repro` of the whole pipeline in a temporary copy of the project."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.integration.pipeline_copy import clone, run, set_params

STAGES = {"synth", "ingest", "validate", "preprocess", "train", "evaluate", "gate", "package"}


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(
    reproduced: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    src, out = reproduced  # the session's `dvc repro` (conftest.py): these tests change params
    return clone(src, tmp_path_factory.mktemp("dvc_repo") / "repo"), out


def test_repro_runs_every_stage_and_builds_a_bento(repo):
    dest, out = repo
    assert ran_stages(out) == STAGES
    bento = json.loads((dest / "reports/bento.json").read_text())
    info = run(["bentoml", "get", bento["bento_tag"], "-o", "json"], dest)
    assert bento["bento_tag"].split(":")[0] in info.stdout
    gate = json.loads((dest / "reports/gate.json").read_text())
    assert gate["passed"] is True


def test_metrics_are_dvc_metrics(repo):
    dest, _ = repo
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], dest).stdout)
    metrics = next(iter(shown.values()))["data"]["reports/metrics.json"]["data"]
    assert set(metrics) >= {"auroc", "accuracy", "sensitivity", "specificity"}
    # the tiny model must have learned something real, not just run
    assert metrics["auroc"] > 0.6


def test_second_repro_runs_nothing(repo):
    dest, _ = repo
    out = run(["dvc", "repro"], dest).stdout
    assert ran_stages(out) == set(), out
    assert "Data and pipelines are up to date" in run(["dvc", "status"], dest).stdout


def test_changing_one_param_reruns_only_its_stages(repo):
    dest, _ = repo
    set_params(dest, {"evaluate": {"threshold": 0.45}})
    out = run(["dvc", "repro"], dest).stdout
    ran = ran_stages(out)
    assert "evaluate" in ran
    assert ran <= {"evaluate", "gate", "package"}, ran


def test_gate_refusal_stops_before_packaging(repo):
    dest, _ = repo
    before = (dest / "reports/bento.json").read_text()
    metrics = json.loads((dest / "reports/metrics.json").read_text())
    # demand more than the model achieved on a metric it did not max out
    metric = next(m for m in ("sensitivity", "specificity", "auroc") if metrics[m] < 1.0)
    set_params(dest, {"gate": {f"min_{metric}": min(1.0, metrics[metric] + 0.01)}})
    proc = run(["dvc", "repro"], dest, check=False)
    assert proc.returncode != 0
    assert "refused by the evaluation gate" in proc.stderr + proc.stdout
    assert f"{metric} = " in proc.stderr + proc.stdout
    assert "package" not in ran_stages(proc.stdout)
    assert (dest / "reports/bento.json").read_text() == before
