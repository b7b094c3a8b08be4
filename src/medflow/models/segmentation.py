"""The train stage for `data.task: segmentation`: a Lightning fit of the U-Net on the
preprocessed images and masks; writes the model artifact as classification does.

It shares classification's machinery (models.training): the fingerprinted checkpoints an
interrupted run resumes from, the time-budget plan, the Trainer with its settled early
stopping and checkpoint, the CSV and dvclive curves. One network, no ensemble, no test-time
views, no calibration: the model's output is per-segment logits.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch

from medflow.config import AugmentParams, ConfigError, TrainParams
from medflow.data.arrays import ArraysMeta, read_meta
from medflow.io import write_json_atomic
from medflow.models.artifact import ModelSpec
from medflow.models.budget import BudgetGuard, Plan
from medflow.models.progress import EpochProgress, Progress, clock
from medflow.models.seg_augment import augment_pair
from medflow.models.seg_lightning import (
    MaskDataModule,
    SegmentationLoss,
    Segmenter,
    dice_per_image,
    predict_logits,
)
from medflow.models.training import (
    _fingerprint,
    _is_rank_zero_launcher,
    _loggers,
    _plan,
    _prepare_checkpoints,
    _trainer,
    _write_artifact,
    default_checkpoint_dir,
    quiet_lightning,
)
from medflow.provenance import git_revision, library_versions

log = logging.getLogger(__name__)

TASK = "segmentation"
ARCHITECTURE = "unet"


@dataclass(frozen=True)
class SegTrainResult:
    model_dir: Path
    best_checkpoint: Path
    best_val_dice: float
    epochs_run: int


def monitor_of(params: TrainParams) -> str:
    """The logged metric early stopping and the kept checkpoint follow: train.monitor's
    val_auroc stands for val_dice in segmentation (there is no AUROC); val_loss is val_loss."""
    return "val_dice" if params.monitor == "val_auroc" else "val_loss"


def run_train_segmentation(
    params: TrainParams,
    class_names: list[str],
    arrays_dir: Path,
    out_dir: Path,
    checkpoint_dir: Path | None = None,
    callbacks: Sequence[pl.Callback] = (),
    root: Path | None = None,
    progress: Progress | None = None,
    live_dir: Path | None = None,
) -> SegTrainResult:
    """Fit the U-Net (`accelerator="auto"`, `params.strategy`/`devices`/`num_nodes`) on the
    images and masks of `arrays_dir` within `params.time_budget_minutes` (the epochs follow
    from the measured speed of the first steps; one network); write model.pt, model.json,
    checkpoints/best.ckpt and logs/ into `out_dir`. Arguments as models.training.run_train's
    (`root` is unused: pretrained weights are refused).

    Raises:
        ConfigError: train.pretrained_weights is set, both loss weights are 0, or the image
            side does not halve through train.unet_channels' levels.
        ValueError: masks missing, of the wrong shape or not 0/1; an empty split.
    """
    started = time.monotonic()
    # the U-Net's own batch size and learning rate (train.unet_*) stand for the classifier's
    params = params.model_copy(
        update={
            "batch_size": params.unet_batch_size,
            "learning_rate": params.unet_learning_rate,
            "max_epochs": params.unet_max_epochs,
        }
    )
    _check_params(params)
    quiet_lightning()
    meta = read_meta(arrays_dir)
    dm = MaskDataModule(arrays_dir, params)
    dm.setup()
    segments = len(class_names) - 1
    in_channels, size = _check_data(dm, segments, params)
    monitor = monitor_of(params)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(out_dir)
    fingerprint = _fingerprint(params, class_names, meta, task=TASK)
    resume = _prepare_checkpoints(ckpt_dir, fingerprint)

    def segmenter(fit_params: TrainParams) -> Segmenter:
        pl.seed_everything(fit_params.seed, workers=True, verbose=False)
        return Segmenter(in_channels, segments, fit_params)

    single = params.model_copy(update={"ensemble_max": 1})  # no ensemble for segmentation
    loss = SegmentationLoss(params.dice_weight, params.ce_weight)
    step_loss = partial(_step_loss, loss, params.augment)
    plan = _plan(single, dm, ckpt_dir, lambda: segmenter(params).net, loss=step_loss)
    fit_params = params.model_copy(update={"max_epochs": plan.epochs})
    dm.params = fit_params
    model = segmenter(fit_params)
    guard = [BudgetGuard(time.time() + plan.budget_seconds)] if plan.budget_seconds else []
    fitted = _fit(plan, model, dm, ckpt_dir, [*callbacks, *guard], progress, live_dir, resume)
    if fitted is None:  # another DDP rank: rank 0 writes the artifact
        return SegTrainResult(out_dir, out_dir / "checkpoints" / "best.ckpt", float("nan"), 0)

    spent = time.monotonic() - started
    trainer = fitted.trainer or _trainer(fit_params, ckpt_dir, [], [], monitor=monitor)
    run = {
        "best_val_dice": fitted.val_dice,
        "best_val_loss": fitted.val_loss,
        "monitor": monitor,
        "epochs_run": fitted.epochs,
        "plan": {**plan.as_dict(), "seconds_spent": round(spent, 1)},
        "resumed": resume,
    }
    spec = _spec(params, class_names, in_channels, meta, trainer, run)
    _write_artifact(out_dir, ckpt_dir, model.net, spec, [fitted.checkpoint])
    budget = f" of the {clock(plan.budget_seconds)} budget" if plan.budget_seconds else ""
    log.info(
        "trained the U-Net (%d px, %d segment(s)), %d epochs, on %s in %s%s; val Dice %.4f",
        size,
        segments,
        fitted.epochs,
        type(trainer.accelerator).__name__,
        clock(spent),
        budget,
        fitted.val_dice,
    )
    return SegTrainResult(
        model_dir=out_dir,
        best_checkpoint=out_dir / "checkpoints" / "best.ckpt",
        best_val_dice=fitted.val_dice,
        epochs_run=fitted.epochs,
    )


def _step_loss(
    loss: SegmentationLoss,
    augment: AugmentParams,
    net: torch.nn.Module,
    x: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """A training step's augmentation and loss, for the time-budget probe (models.budget)."""
    x, masks = augment_pair(x, masks, augment, generator)
    return loss(net(x), masks)


def _check_params(params: TrainParams) -> None:
    problems = []
    if params.pretrained_weights is not None:
        problems.append(
            "train.pretrained_weights is not supported for segmentation yet; set it to null"
        )
    if params.dice_weight == 0 and params.ce_weight == 0:
        problems.append("train.dice_weight and train.ce_weight are both 0: the loss is 0")
    if problems:
        raise ConfigError("; ".join(problems))
    if params.imbalance == "weighted_loss":
        log.info("train.imbalance weighted_loss does not apply to segmentation: no weights")


def _check_data(dm: MaskDataModule, segments: int, params: TrainParams) -> tuple[int, int]:
    """(in_channels, side) of the images, once masks and images agree."""
    for split in ("train", "val"):
        x, masks = dm.data[split].tensors
        if len(x) == 0:
            raise ValueError(f"the {split} split is empty; check data.split fractions")
        expected = (len(x), segments, *x.shape[-2:])
        if tuple(masks.shape) != expected:
            raise ValueError(
                f"{split}_m.npy has shape {tuple(masks.shape)}, expected {expected} (images,"
                f" segments = len(data.class_names) - 1 = {segments}, side, side): re-run"
                " the preprocess stage with data.task segmentation"
            )
        if masks.dtype != torch.uint8 or int(masks.max()) > 1:
            raise ValueError(
                f"{split}_m.npy must hold 0/1 uint8 masks, got {masks.dtype} with maximum"
                f" {int(masks.max())}: re-run the preprocess stage"
            )
    x = dm.data["train"].tensors[0]
    size = int(x.shape[-1])
    factor = 2 ** (len(params.unet_channels) - 1)
    if size % factor:
        raise ConfigError(
            f"the image side {size} px does not halve {len(params.unet_channels) - 1} times"
            f" (train.unet_channels {params.unet_channels}): use a preprocess.image_size"
            f" divisible by {factor}, or fewer levels"
        )
    return int(x.shape[1]), size


@dataclass
class _Fitted:
    checkpoint: Path
    val_dice: float
    val_loss: float
    epochs: int
    trainer: pl.Trainer | None  # None: finished by an earlier, interrupted run


def _fit(
    plan: Plan,
    model: Segmenter,
    dm: MaskDataModule,
    ckpt_dir: Path,
    callbacks: list[pl.Callback],
    progress: Progress | None,
    live_dir: Path | None,
    resume: bool,
) -> _Fitted | None:
    """Fit (or resume, or load when an earlier run finished it) in ckpt_dir/member-0 (the
    layout classification's resume logic knows); load the kept checkpoint into `model` on
    the CPU. None on DDP ranks other than zero."""
    params = model.params
    fit_dir = ckpt_dir / "member-0"
    done_file = fit_dir / "done.json"
    trainer: pl.Trainer | None = None
    if not done_file.is_file():
        epoch_line = EpochProgress(progress, metric=("val_dice", "val Dice"))
        loggers = _loggers(ckpt_dir, live_dir, resume)
        trainer = _trainer(
            params, fit_dir, [*callbacks, epoch_line], loggers, monitor=monitor_of(params)
        )
        last = fit_dir / "last.ckpt"
        if last.is_file():
            log.info("resuming an interrupted run from %s", last)
        fit_start = time.monotonic()
        trainer.fit(model, datamodule=dm, ckpt_path=last if last.is_file() else None)
        if not trainer.is_global_zero:
            return None
        epochs = int(torch.load(last, map_location="cpu", weights_only=True)["epoch"]) + 1
        done = {"epochs": epochs, "seconds": time.monotonic() - fit_start}
        write_json_atomic(done_file, {**done, "world_size": trainer.world_size})
    elif not _is_rank_zero_launcher():
        return None
    done = json.loads(done_file.read_text())
    best_path = fit_dir / "best.ckpt"
    if not best_path.is_file():  # stopped by the budget before the settled half
        best_path = fit_dir / "last.ckpt"
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    model.cpu()
    x_val, m_val = dm.data["val"].tensors
    logits = predict_logits(model.net, x_val, params.batch_size)
    val_dice = float(dice_per_image(logits, m_val).mean())
    val_loss = float(model.loss(logits, m_val.float()))
    log.info("val Dice %.4f, val loss %.4f after %d epochs", val_dice, val_loss, done["epochs"])
    return _Fitted(best_path, val_dice, val_loss, done["epochs"], trainer)


def _spec(
    params: TrainParams,
    class_names: list[str],
    in_channels: int,
    meta: ArraysMeta,
    trainer: pl.Trainer,
    run: dict[str, object],
) -> ModelSpec:
    """model.json: the U-Net, its preprocessing, and how it was trained (`run`)."""
    return ModelSpec(
        task=TASK,
        architecture=ARCHITECTURE,
        in_channels=in_channels,
        num_classes=len(class_names) - 1,
        width=params.width,
        dropout=params.dropout,
        class_names=list(class_names),
        preprocess=meta.preprocess.model_dump(),
        unet_channels=list(params.unet_channels),
        provenance={
            "data_hash": meta.data_hash,
            "counts": meta.counts,
            "train_params": params.model_dump(),
            **run,
            "git_revision": git_revision(),
            "library_versions": library_versions(),
            "accelerator": type(trainer.accelerator).__name__,
            "strategy": type(trainer.strategy).__name__,
            "world_size": trainer.world_size,
        },
    )
