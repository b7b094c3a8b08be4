"""`dvc exp run` to the gate on a copy of the reproduced pipeline (docs/training.md,
"Experiments"): the variant is trained, evaluated and judged, listed by `dvc exp show --json`
with its param and metrics, and not packaged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.pipeline_copy import clone, run
from tests.helpers.stages import ran_stages

NAME = "lr-variant"


def _experiment(shown: list[dict], name: str) -> dict:
    """The data of experiment `name` in `dvc exp show --json` (under its baseline commit)."""
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            if exp.get("name") == name:
                return exp["revs"][0]["data"]
    raise AssertionError(f"no experiment {name} in dvc exp show: {json.dumps(shown)[:2000]}")


@pytest.mark.slow
def test_exp_run_to_the_gate_is_listed_and_not_packaged(
    reproduced: tuple[Path, str], tmp_path: Path
) -> None:
    repo = clone(reproduced[0], tmp_path / "repo")
    learning_rate = yaml.safe_load((repo / "params.yaml").read_text())["train"]["learning_rate"]
    # twice the rate still passes the tiny copy's gate (0.001 -> 0.002; a tenth, 0.0003, not)
    variant = 2 * learning_rate
    # dvc exp run starts from a commit: the reproduced pipeline, packaged, is the baseline
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run([*git, "add", "-A"], repo)
    run([*git, "commit", "-qm", "reproduced"], repo)
    bento = (repo / "reports/bento.json").read_text()

    proc = run(
        ["dvc", "exp", "run", "-S", f"train.learning_rate={variant}", "-n", NAME, "gate"], repo
    )
    assert ran_stages(proc.stdout) == {"train", "evaluate", "gate"}, proc.stdout[-3000:]

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    data = _experiment(shown, NAME)
    assert data["params"]["params.yaml"]["data"]["train"]["learning_rate"] == variant
    metrics = data["metrics"]["reports/metrics.json"]["data"]
    assert 0.0 <= metrics["auroc"] <= 1.0 and "ece" in metrics, metrics
    curves = data["metrics"]["reports/training/metrics.json"]["data"]
    assert curves["step"] >= 1 and 0.0 <= curves["val"]["auroc"] <= 1.0, curves
    baseline = next(b for b in shown if b.get("experiments"))["data"]
    assert baseline["params"]["params.yaml"]["data"]["train"]["learning_rate"] == learning_rate

    # package did not run: no Bento built, and DVC sees it out of date with the variant's model
    assert (repo / "reports/bento.json").read_text() == bento
    assert "package" in json.loads(run(["dvc", "status", "--json", "package"], repo).stdout)
