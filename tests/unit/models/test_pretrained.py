"""train.pretrained_weights: a local file loaded before the first step, its sha256 recorded in
model.json and the model card; a missing or foreign file stops the run before training."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from medflow.config import ConfigError, TrainParams
from medflow.evaluation.model_card import render_model_card
from medflow.models.artifact import load_spec
from medflow.models.net import build_network
from medflow.models.training import run_train
from tests.helpers.arrays_factory import write_arrays
from tests.helpers.handoffs import evaluation_context, gate_report, metrics

TINY = {"width": 4, "batch_size": 16, "max_epochs": 1, "time_budget_minutes": None}


class _StateAtStart(pl.Callback):
    """The network's weights and its forward on a fixed input, before the first step."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.state: dict[str, torch.Tensor] = {}
        self.logits = torch.empty(0)

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        net = module.net
        self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.eval()
        with torch.no_grad():
            self.logits = net(self.x)
        net.train()


def _weights_file(path: Path, num_classes: int = 2, seed: int = 123) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_network("smallcnn", 1, num_classes, width=4, dropout=0.1, image_size=32).eval()
    with torch.no_grad():  # BN statistics of their own, so that they are seen loaded too
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net


def test_weights_are_loaded_before_training_and_recorded(tmp_path: Path) -> None:
    arrays = write_arrays(tmp_path / "arrays", n=32, size=32)
    source = _weights_file(tmp_path / "weights" / "cnn.pt")
    x = torch.rand(4, 1, 32, 32)
    start = _StateAtStart(x)
    params = TrainParams(**TINY, pretrained_weights="weights/cnn.pt")
    run_train(params, ["a", "b"], arrays, tmp_path / "models", callbacks=[start], root=tmp_path)

    expected = source.state_dict()
    assert start.state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(start.state[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(start.logits, source(x))

    sha256 = hashlib.sha256((tmp_path / "weights" / "cnn.pt").read_bytes()).hexdigest()
    provenance = load_spec(tmp_path / "models").provenance
    record = provenance["pretrained_weights"]
    assert record["path"] == "weights/cnn.pt" and record["sha256"] == sha256
    assert record["loaded"] == len(expected) and record["skipped_shape"] == []
    assert provenance["train_params"]["pretrained_weights"] == "weights/cnn.pt"

    m = metrics()
    card = render_model_card(m, {}, evaluation_context(provenance), gate_report(m))
    assert f"`weights/cnn.pt` (sha256 `{sha256}`)" in card


def test_a_head_of_another_class_count_is_skipped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    arrays = write_arrays(tmp_path / "arrays", n=32, size=32)
    source = _weights_file(tmp_path / "five.pt", num_classes=5)
    start = _StateAtStart(torch.rand(1, 1, 32, 32))
    params = TrainParams(**TINY, pretrained_weights=str(tmp_path / "five.pt"))  # absolute
    with caplog.at_level(logging.INFO, logger="medflow.models.pretrained"):
        run_train(params, ["a", "b"], arrays, tmp_path / "models", callbacks=[start])

    head = ["head.3.bias", "head.3.weight"]
    record = load_spec(tmp_path / "models").provenance["pretrained_weights"]
    assert record["skipped_shape"] == head and record["missing"] == []
    assert record["loaded"] == len(source.state_dict()) - 2
    assert "the classifier head (head.3) differs in shape" in caplog.text
    warned = [r for r in caplog.records if r.name == "medflow.models.pretrained" and r.levelno > 20]
    assert warned == []
    assert torch.equal(start.state["features.0.0.weight"], source.features[0][0].weight)
    assert start.state["head.3.weight"].shape == (2, 16)


def test_a_missing_file_stops_the_run_before_training(tmp_path: Path) -> None:
    arrays = write_arrays(tmp_path / "arrays", size=32)
    params = TrainParams(**TINY, pretrained_weights="weights/absent.pt")
    with pytest.raises(ConfigError, match=r"no file at .*weights/absent\.pt"):
        run_train(params, ["a", "b"], arrays, tmp_path / "models", root=tmp_path)
    assert not (tmp_path / "models").exists()


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    arrays = write_arrays(tmp_path / "arrays", size=32)
    _weights_file(tmp_path / "cnn.pt")
    params = TrainParams(**TINY, architecture="resnet", pretrained_weights="cnn.pt")
    # the heads happen to fit (both 2 x 16), nothing else does
    with pytest.raises(ConfigError, match=r"none of the \d+ tensors of .*cnn\.pt fits a resnet"):
        run_train(params, ["a", "b"], arrays, tmp_path / "models", root=tmp_path)


def test_a_file_that_is_not_weights_is_refused(tmp_path: Path) -> None:
    arrays = write_arrays(tmp_path / "arrays", size=32)
    (tmp_path / "notes.pt").write_text("not a tensor file")
    params = TrainParams(**TINY, pretrained_weights="notes.pt")
    with pytest.raises(ConfigError, match=r"notes\.pt is not a PyTorch weights file"):
        run_train(params, ["a", "b"], arrays, tmp_path / "models", root=tmp_path)
