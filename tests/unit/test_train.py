"""run_train on tiny in-memory arrays: artifact, resume, curves, imbalance, architectures."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_auroc

from medflow.config import TrainParams
from medflow.data.arrays import load_ids, load_split, write_labels
from medflow.models.artifact import load_model
from medflow.models.calibration import fit_temperature, logits_of
from medflow.models.lightning import Classifier
from medflow.models.training import default_checkpoint_dir, run_train
from tests.helpers.arrays_factory import write_arrays

TINY = {
    "max_epochs": 3,
    "width": 4,
    "batch_size": 16,
    "early_stopping_patience": 10,
    "time_budget_minutes": None,  # exactly max_epochs, one network
}


def params(**kw: object) -> TrainParams:
    return TrainParams(**{**TINY, **kw})


@pytest.mark.parametrize(
    ("architecture", "channels", "classes"), [("resnet", 1, 2), ("smallcnn", 3, 3)]
)
def test_trains_an_artifact_load_model_reads(
    tmp_path: Path, architecture: str, channels: int, classes: int
) -> None:
    arrays = write_arrays(tmp_path / "arrays", channels=channels, classes=classes)
    names = [f"c{i}" for i in range(classes)]
    result = run_train(params(architecture=architecture), names, arrays, tmp_path / "models")
    net, spec = load_model(tmp_path / "models")
    assert spec.architecture == architecture and spec.num_classes == classes
    assert net(torch.zeros(2, channels, 16, 16)).shape == (2, classes)
    assert result.best_checkpoint.is_file() and result.epochs_run == 3
    # the val AUROC of the network saved, before its temperature was folded into it
    x_val, y_val = (torch.from_numpy(a) for a in load_split(arrays, "val"))
    temperature = spec.provenance["calibration"]["temperature"]
    probs = (logits_of(net, x_val) * temperature).softmax(-1)
    expected = float(multiclass_auroc(probs, y_val, num_classes=classes, average="macro"))
    assert result.best_val_auroc == pytest.approx(expected, abs=1e-6)
    # a finished run leaves no resume state behind
    assert not default_checkpoint_dir(tmp_path / "models").exists()


class _Interrupt(pl.Callback):
    def __init__(self, at_epoch: int):
        self.at_epoch = at_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, _: pl.LightningModule) -> None:
        if trainer.current_epoch == self.at_epoch:
            raise RuntimeError("power cut")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_model(folder)[0].state_dict()


@pytest.mark.parametrize("imbalance", ["none", "balanced_sampler"])
def test_resumed_run_ends_with_the_uninterrupted_weights(tmp_path: Path, imbalance: str) -> None:
    arrays = write_arrays(tmp_path / "arrays")
    p = params(max_epochs=4, imbalance=imbalance)
    run_train(p, ["a", "b"], arrays, tmp_path / "straight")

    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="power cut"):
        run_train(p, ["a", "b"], arrays, out, callbacks=[_Interrupt(at_epoch=2)])
    assert not out.exists()  # nothing half-written
    assert (default_checkpoint_dir(out) / "member-0" / "last.ckpt").is_file()
    result = run_train(p, ["a", "b"], arrays, out)
    assert json.loads((out / "model.json").read_text())["provenance"]["resumed"] is True
    assert result.epochs_run == 4

    straight, resumed = _weights(tmp_path / "straight"), _weights(out)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def _curve(live: Path, name: str) -> dict[int, float]:
    """dvclive's tsv of one metric: {step (the epochs done): value}."""
    rows = (tsv := live / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    assert header[-2:] == ["step", name.split("/")[-1]], (tsv, header)
    return {int(r.split("\t")[-2]): float(r.split("\t")[-1]) for r in rows[1:]}


def test_curves_have_a_row_per_epoch_and_a_resumed_run_adds_to_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a git repository without a commit or DVC: dvclive alone would `dvc init` it, then fail
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    arrays = write_arrays(tmp_path / "arrays")
    p, out, live = params(max_epochs=4), tmp_path / "models", tmp_path / "training"
    with pytest.raises(RuntimeError, match="power cut"):
        run_train(p, ["a", "b"], arrays, out, callbacks=[_Interrupt(at_epoch=2)], live_dir=live)
    assert sorted(_curve(live, "val/auroc")) == [1, 2]
    run_train(p, ["a", "b"], arrays, out, live_dir=live)

    curves = {name: _curve(live, name) for name in ("train/loss", "val/loss", "val/auroc")}
    for name, curve in curves.items():
        assert sorted(curve) == [1, 2, 3, 4], name
    # the same values as the artifact's CSV logs (two versions: before and after the cut)
    csv_auroc = [
        float(row.split(",")[header.index("val_auroc")])
        for log in sorted((out / "logs").glob("version_*/metrics.csv"))
        for header in [log.read_text().splitlines()[0].split(",")]
        for row in log.read_text().splitlines()[1:]
        if row.split(",")[header.index("val_auroc")]
    ]
    assert [curves["val/auroc"][e] for e in (1, 2, 3, 4)] == pytest.approx(csv_auroc)
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["step"] == 4
    assert summary["val"]["auroc"] == pytest.approx(curves["val/auroc"][4])
    assert summary["train"]["loss"] == pytest.approx(curves["train/loss"][4])
    # no pipeline declaration or experiment of its own
    assert not list(tmp_path.rglob("dvc.yaml")) and not (tmp_path / ".dvc").exists()
    assert not list(out.glob("*dvclive*")) and not (tmp_path / "dvclive").exists()


def test_checkpoints_of_another_config_are_not_resumed(tmp_path: Path) -> None:
    arrays = write_arrays(tmp_path / "arrays")
    out = tmp_path / "models"
    with pytest.raises(RuntimeError):
        run_train(params(), ["a", "b"], arrays, out, callbacks=[_Interrupt(at_epoch=1)])
    result = run_train(params(learning_rate=1e-2), ["a", "b"], arrays, out)
    assert json.loads((out / "model.json").read_text())["provenance"]["resumed"] is False
    assert result.epochs_run == 3


def test_weighted_loss_records_inverse_frequency_weights(tmp_path: Path) -> None:
    arrays = write_arrays(tmp_path / "arrays")
    ids = load_ids(arrays, "train")
    write_labels(arrays, "train", np.where(np.arange(len(ids)) < 36, 0, 1), ids)  # 36 : 12
    run_train(params(imbalance="weighted_loss", max_epochs=1), ["a", "b"], arrays, tmp_path / "m")
    weights = json.loads((tmp_path / "m" / "model.json").read_text())["provenance"]
    assert weights["class_weights"] == pytest.approx([48 / 72, 48 / 24])


def test_monitor_val_auroc_is_accepted(tmp_path: Path) -> None:
    arrays = write_arrays(tmp_path / "arrays")
    result = run_train(
        params(monitor="val_auroc", max_epochs=2), ["a", "b"], arrays, tmp_path / "m"
    )
    assert result.epochs_run == 2
    provenance = json.loads((tmp_path / "m" / "model.json").read_text())["provenance"]
    assert provenance["train_params"]["monitor"] == "val_auroc"
    assert provenance["best_val_auroc"] == result.best_val_auroc


def _calibrated_test_loss(net: torch.nn.Module, arrays: Path) -> tuple[float, float]:
    """(cross-entropy, AUROC) on the test split, the network's logits scaled by the
    temperature that fits the val split best: what the network knows, not its confidence."""
    x_val, y_val = (torch.from_numpy(a) for a in load_split(arrays, "val"))
    x, y = (torch.from_numpy(a) for a in load_split(arrays, "test"))
    logits = logits_of(net, x) / fit_temperature(logits_of(net, x_val), y_val)
    auroc = multiclass_auroc(logits.softmax(-1), y, num_classes=2, average="macro")
    return float(F.cross_entropy(logits, y)), float(auroc)


def test_training_beats_the_same_network_untrained(tmp_path: Path) -> None:
    """Training must learn: on separable data the trained network is far better than the
    same network (same seed, same initial weights) before training, both calibrated alike.
    Fails with the optimizer step disabled or a learning rate of ~0."""
    arrays = write_arrays(tmp_path / "arrays")
    p = params(max_epochs=10, learning_rate=1e-2)
    run_train(p, ["a", "b"], arrays, tmp_path / "m")
    trained, _ = load_model(tmp_path / "m")
    pl.seed_everything(p.seed, workers=True, verbose=False)  # as run_train seeds the network
    untrained = Classifier(1, 2, p).net.eval()

    loss, auroc = _calibrated_test_loss(trained, arrays)
    loss0, auroc0 = _calibrated_test_loss(untrained, arrays)
    assert auroc >= 0.95 and loss < 0.5 * loss0, (loss, auroc, loss0, auroc0)


class _InterruptMember(pl.Callback):
    """Raises at `at_epoch` of the `member`-th fit (0-based) among the fits it sees."""

    def __init__(self, member: int, at_epoch: int):
        self.member, self.at_epoch, self.fits = member, at_epoch, -1

    def on_fit_start(self, trainer: pl.Trainer, _: pl.LightningModule) -> None:
        self.fits += 1

    def on_train_epoch_start(self, trainer: pl.Trainer, _: pl.LightningModule) -> None:
        if self.fits == self.member and trainer.current_epoch == self.at_epoch:
            raise RuntimeError("power cut")


def test_a_budget_trains_an_ensemble_that_resumes_and_loads_as_one(tmp_path: Path) -> None:
    """A budget generous for tiny data: two members of max_epochs (ensemble_max), their mean
    over the test-time views calibrated as one; cut in the second member, the resumed run
    keeps the first, follows the same plan and ends with the same weights."""
    arrays = write_arrays(tmp_path / "arrays")
    p = params(
        max_epochs=3,
        time_budget_minutes=10,
        ensemble_max=2,
        target_steps=1000,
        tta=True,
        # the toy classes differ by where their square is: a 1-pixel test-time shift at most
        augment={"max_shift": 2},
    )
    straight = run_train(p, ["a", "b"], arrays, tmp_path / "straight")
    net, spec = load_model(tmp_path / "straight")
    prov = spec.provenance
    assert spec.members == 2 and spec.tta == ["identity", "shift+", "shift-"]
    assert spec.tta_shift == 1
    assert prov["plan"]["epochs"] == 3 and prov["plan"]["members_trained"] == 2
    assert straight.epochs_run == 6 and len(prov["member_val_auroc"]) == 2
    assert prov["calibration"]["method"] in ("none", "temperature")
    assert set(prov["calibration"]["cross_fitted_nll"]) == {"none", "temperature"}
    assert sorted(p.name for p in (tmp_path / "straight" / "checkpoints").iterdir()) == [
        "best-member-2.ckpt",
        "best.ckpt",
    ]
    x_val, y_val = (torch.from_numpy(a.copy()) for a in load_split(arrays, "val"))
    probs = logits_of(net, x_val).softmax(-1)
    assert float(multiclass_auroc(probs, y_val, num_classes=2)) == pytest.approx(
        straight.best_val_auroc, abs=1e-6
    )

    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="power cut"):
        run_train(p, ["a", "b"], arrays, out, callbacks=[_InterruptMember(1, at_epoch=1)])
    ckpts = default_checkpoint_dir(out)
    assert (ckpts / "member-0" / "done.json").is_file()
    assert (ckpts / "member-1" / "last.ckpt").is_file() and (ckpts / "plan.json").is_file()
    run_train(p, ["a", "b"], arrays, out)
    assert load_model(out)[1].provenance["resumed"] is True
    before, after = _weights(tmp_path / "straight"), _weights(out)
    assert before.keys() == after.keys() and any(k.startswith("members.1.") for k in before)
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_label_smoothing_softens_the_training_targets() -> None:
    """The training loss is against (1 - e) one-hot + e uniform, and plain without it."""
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 16, 16), torch.tensor([0, 1] * 4)
    smooth = Classifier(1, 2, params(label_smoothing=0.2, augment=NO_AUGMENT)).eval()
    plain = Classifier(1, 2, params(augment=NO_AUGMENT)).eval()  # eval: no dropout
    plain.net.load_state_dict(smooth.net.state_dict())
    logits = smooth.net(x)
    logp = logits.log_softmax(-1)
    expected = (0.8 * F.nll_loss(logp, y) - 0.2 * logp.mean(-1).mean()).item()
    assert smooth.training_step((x, y), 0).item() == pytest.approx(expected, rel=1e-5)
    assert plain.training_step((x, y), 0).item() == pytest.approx(
        F.cross_entropy(logits, y).item(), rel=1e-5
    )


NO_AUGMENT = {"max_shift": 0, "max_rotation": 0, "max_scale": 0, "brightness": 0, "contrast": 0}
