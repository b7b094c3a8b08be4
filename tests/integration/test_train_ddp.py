"""A real 2-process DDP fit on the CPU (gloo), as a multi-GPU run would do with NCCL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medflow.config import TrainParams
from medflow.models.artifact import load_model
from medflow.models.training import run_train
from tests.helpers.arrays_factory import write_arrays


@pytest.mark.slow
def test_ddp_spawn_on_two_cpu_processes_trains_a_model(tmp_path: Path) -> None:
    arrays = write_arrays(tmp_path / "arrays", n=64)
    params = TrainParams(
        architecture="resnet",
        max_epochs=2,
        width=4,
        batch_size=16,
        strategy="ddp_spawn",
        devices=2,
        time_budget_minutes=None,
    )
    result = run_train(params, ["a", "b"], arrays, tmp_path / "models")

    provenance = json.loads((tmp_path / "models" / "model.json").read_text())["provenance"]
    assert provenance["world_size"] == 2
    assert provenance["strategy"] == "DDPStrategy"
    assert result.epochs_run == 2
    net, spec = load_model(tmp_path / "models")
    assert net(torch.zeros(1, 1, 16, 16)).shape == (1, 2) and spec.architecture == "resnet"
