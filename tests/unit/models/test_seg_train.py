"""Segmentation training on tiny synthetic arrays (bright discs on noise, 32 px): a real
Lightning fit of the MONAI U-Net that learns, resumes, and round-trips through load_model."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from medflow.config import AugmentParams, ConfigError, Params, PreprocessParams, TrainParams
from medflow.data.arrays import META_FILE, ArraysMeta, load_masks, write_images, write_labels
from medflow.models.artifact import load_model
from medflow.models.augment import random_affine
from medflow.models.seg_augment import augment_pair
from medflow.models.seg_lightning import Segmenter, dice_per_image, predict_logits
from medflow.models.segmentation import run_train_segmentation
from medflow.models.training import default_checkpoint_dir
from medflow.stages.train import train as train_stage

NAMES = ["background", "lesion"]
TINY = {
    "unet_max_epochs": 4,
    "unet_batch_size": 8,
    "unet_learning_rate": 1e-2,
    "unet_channels": [8, 16, 32],
    "dropout": 0.0,
    "early_stopping_patience": 10,
    "time_budget_minutes": None,  # exactly max_epochs
    "imbalance": "none",
}


def params(**kw: object) -> TrainParams:
    return TrainParams(**{**TINY, **kw})


def write_discs(folder: Path, n: int = 48, size: int = 32, seed: int = 0) -> Path:
    """Arrays as preprocess writes them for segmentation: images with a bright disc (radius
    3-7 px) on noise in three of four images, the disc as the mask of one segment."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"train": n, "val": n // 2, "test": n // 2}
    for split, count in counts.items():
        x = rng.normal(0.25, 0.08, (count, 1, size, size)).astype(np.float32)
        masks = np.zeros((count, 1, size, size), np.uint8)
        for i in range(count):
            if i % 4 == 3:
                continue  # no lesion
            r = rng.uniform(3, 7)
            cy, cx = rng.uniform(r + 1, size - r - 1, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            masks[i, 0] = disc
            x[i, 0][disc] += 0.4
        write_images(folder, split, x)
        labels = masks.reshape(count, -1).max(1).astype(np.int64)
        write_labels(folder, split, labels, np.array([f"{split}-{i}" for i in range(count)]))
        np.save(folder / f"{split}_m.npy", masks)
    ArraysMeta(
        counts=counts,
        data_hash="discs",
        preprocess=PreprocessParams(image_size=size),
        shape=(1, size, size),
        segments=1,
    ).write(folder / META_FILE)
    return folder


@pytest.fixture(scope="module")
def discs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_discs(tmp_path_factory.mktemp("discs"))


def _val_dice(net: torch.nn.Module, arrays: Path) -> float:
    x = torch.from_numpy(np.load(arrays / "val_x.npy"))
    masks = torch.from_numpy(np.array(load_masks(arrays, "val")))
    return float(dice_per_image(predict_logits(net, x), masks).mean())


def test_the_stage_trains_a_unet_that_beats_it_untrained_and_loads_back(
    discs: Path, tmp_path: Path
) -> None:
    """Through the stage (data.task segmentation): the artifact is a U-Net of one segment
    whose val Dice, recomputed from load_model's network, is the one reported and far above
    the same network's before training."""
    p = params(unet_max_epochs=16, unet_learning_rate=3e-2)
    all_params = Params(data={"task": "segmentation", "class_names": NAMES}, train=p)
    out = tmp_path / "models"
    result = train_stage(all_params, discs, out)

    net, spec = load_model(out)
    assert (spec.task, spec.architecture, spec.num_classes) == ("segmentation", "unet", 1)
    assert spec.unet_channels == [8, 16, 32] and spec.class_names == NAMES
    assert spec.preprocess["image_size"] == 32 and spec.members == 1 and spec.tta == []
    prov = spec.provenance
    assert prov["data_hash"] == "discs" and prov["monitor"] == "val_loss"
    assert prov["epochs_run"] == result.epochs_run == 16
    assert prov["train_params"]["unet_channels"] == [8, 16, 32] and "git_revision" in prov
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt"]
    assert list((out / "logs").glob("version_*/metrics.csv"))
    assert not default_checkpoint_dir(out).exists()

    # the same logits as the kept checkpoint loaded into the LightningModule
    x = torch.from_numpy(np.load(discs / "val_x.npy"))
    module = Segmenter(1, 1, p)
    state = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    assert torch.equal(predict_logits(net, x), predict_logits(module.net, x))
    assert predict_logits(net, x).shape == (24, 1, 32, 32)

    trained = _val_dice(net, discs)
    assert trained == pytest.approx(result.best_val_dice, abs=1e-6)
    pl.seed_everything(p.seed, workers=True, verbose=False)  # as the runner seeds the network
    untrained = _val_dice(Segmenter(1, 1, p).net, discs)
    assert trained >= 0.8 and trained > untrained + 0.5, (trained, untrained)


class _Interrupt(pl.Callback):
    def __init__(self, at_epoch: int):
        self.at_epoch = at_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, _: pl.LightningModule) -> None:
        if trainer.current_epoch == self.at_epoch:
            raise RuntimeError("power cut")


def _curve(live: Path, name: str) -> dict[int, float]:
    rows = (live / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
    return {int(r.split("\t")[-2]): float(r.split("\t")[-1]) for r in rows[1:]}


def test_a_resumed_run_ends_with_the_uninterrupted_weights_and_curves(
    discs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # as dvclive meets it
    monkeypatch.chdir(tmp_path)
    p = params(imbalance="balanced_sampler")  # the sampler's draws must resume too
    run_train_segmentation(p, NAMES, discs, tmp_path / "straight")

    out, live = tmp_path / "resumed", tmp_path / "training"
    with pytest.raises(RuntimeError, match="power cut"):
        run_train_segmentation(
            p, NAMES, discs, out, callbacks=[_Interrupt(at_epoch=2)], live_dir=live
        )
    assert not out.exists()
    assert (default_checkpoint_dir(out) / "member-0" / "last.ckpt").is_file()
    result = run_train_segmentation(p, NAMES, discs, out, live_dir=live)
    assert result.epochs_run == 4
    assert load_model(out)[1].provenance["resumed"] is True

    straight, resumed = load_model(tmp_path / "straight")[0], load_model(out)[0]
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key

    for name in ("train/loss", "val/loss", "val/dice"):
        assert sorted(_curve(live, name)) == [1, 2, 3, 4], name
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["step"] == 4 and summary["val"]["dice"] == pytest.approx(
        _curve(live, "val/dice")[4]
    )


def test_a_time_budget_plans_the_epochs_and_monitor_val_auroc_means_val_dice(
    discs: Path, tmp_path: Path
) -> None:
    # 48 images in batches of 8: 6 steps an epoch; 12 target steps: 2 epochs, one network
    p = params(time_budget_minutes=5, target_steps=12, ensemble_max=5, monitor="val_auroc")
    result = run_train_segmentation(p, NAMES, discs, tmp_path / "m")
    prov = load_model(tmp_path / "m")[1].provenance
    assert result.epochs_run == 2 and prov["plan"]["epochs"] == 2
    assert prov["plan"]["members"] == 1 and prov["plan"]["seconds_per_step"] > 0
    assert prov["monitor"] == "val_dice"
    assert math.isfinite(result.best_val_dice)


def test_masks_of_the_wrong_shape_or_values_are_refused(discs: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"train_m.npy has shape \(48, 1, 32, 32\), expected"):
        run_train_segmentation(params(), ["bg", "a", "b"], discs, tmp_path / "m")
    bad = write_discs(tmp_path / "bad", n=8)
    np.save(bad / "val_m.npy", np.load(bad / "val_m.npy") * 255)
    with pytest.raises(ValueError, match="val_m.npy must hold 0/1 uint8 masks"):
        run_train_segmentation(params(), NAMES, bad, tmp_path / "m")
    seven_levels = [4, 8, 16, 32, 64, 128, 256]
    with pytest.raises(ConfigError, match="side 32 px does not halve 6 times"):
        run_train_segmentation(params(unet_channels=seven_levels), NAMES, discs, tmp_path)
    with pytest.raises(ConfigError, match="pretrained_weights"):
        run_train_segmentation(params(pretrained_weights="w.pt"), NAMES, bad, tmp_path)
    assert not (tmp_path / "m").exists()


def test_image_and_mask_move_together_and_only_the_image_changes_in_intensity() -> None:
    size = 32
    yy, xx = np.mgrid[:size, :size]
    disc = torch.from_numpy(((yy - 12) ** 2 + (xx - 20) ** 2 <= 36).astype(np.uint8))
    masks = disc.expand(16, 1, size, size).clone()
    x = 0.2 + 0.6 * masks.float()
    aug = AugmentParams(max_shift=4, max_rotation=30, max_scale=0.2, brightness=0, contrast=0)

    ax, am = augment_pair(x, masks, aug, torch.Generator().manual_seed(3))
    # the image moves exactly as the classifier's augmentation moves it, from the same draws
    assert torch.equal(ax, random_affine(x, aug, torch.Generator().manual_seed(3)))
    assert set(am.unique().tolist()) <= {0.0, 1.0}  # nearest: still a mask
    assert not torch.equal(am, masks.float())  # it moved
    # where the image is clearly lesion or clearly background, the mask agrees
    sure = (ax > 0.7) | (ax < 0.25)
    assert torch.equal(am[sure], (ax[sure] > 0.5).float())

    flip = AugmentParams(
        max_shift=0, max_rotation=0, max_scale=0, brightness=0.3, contrast=0.3, horizontal_flip=True
    )
    fx, fm = augment_pair(x, masks, flip, torch.Generator().manual_seed(0))
    flipped = [torch.equal(fm[i], masks[i].flip(-1).float()) for i in range(16)]
    kept = [torch.equal(fm[i], masks[i].float()) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)  # the disc is off-centre: the two differ
    for i in range(16):
        # the image flipped with its mask; brightness and contrast changed the image only
        assert fx[i][fm[i] > 0].min() > fx[i][fm[i] == 0].max()
        assert not torch.allclose(fx[i], x[i].flip(-1) if flipped[i] else x[i])
