"""The train stage: a Lightning fit on the preprocessed arrays; writes the model artifact.

An interrupted run resumes from its checkpoints beside the output (`.models-checkpoints/`,
docs/training.md) when the next run has the same params and data. The per-epoch curves go to
the artifact's CSV logs and, given a folder, to dvclive's (the DVC plots of the train stage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger

from medflow.config import TrainParams
from medflow.data.arrays import ArraysMeta, read_meta
from medflow.io import atomic_dir, write_json_atomic
from medflow.models.artifact import ModelSpec, save_model
from medflow.models.budget import (
    PLANNED_SHARE,
    BudgetGuard,
    Plan,
    StepLoss,
    measure_step_seconds,
    plan_training,
)
from medflow.models.calibration import fold_calibration, logits_of, select_calibration
from medflow.models.ensemble import assemble, tta_views
from medflow.models.lightning import ArrayDataModule, Classifier, class_weights
from medflow.models.pretrained import WeightsFile, find_weights, load_pretrained
from medflow.models.progress import EpochProgress, Progress, clock
from medflow.provenance import git_revision, library_versions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    best_checkpoint: Path
    best_val_auroc: float
    epochs_run: int


def quiet_lightning() -> None:
    """Mute Lightning's CPU banners and known-harmless warnings (they drown the stage log)."""
    from pytorch_lightning.utilities import disable_possible_user_warnings

    disable_possible_user_warnings()
    for name in (
        "pytorch_lightning.utilities.rank_zero",
        "pytorch_lightning.accelerators.cuda",
        "lightning_fabric.utilities.seed",
        "lightning.fabric.utilities.seed",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings(
        "ignore",
        message=r".*(treespec, LeafSpec|not supported by the model"
        r" summary|Checkpoint directory .* not empty)",
    )


def _precision() -> str:
    # mixed precision only where it speeds things up; on CPU bf16 is slower for small nets
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


RUN_FILE = "run.json"


def default_checkpoint_dir(out_dir: Path) -> Path:
    """`.models-checkpoints` for `models`: a sibling, so the atomic swap of out_dir keeps it."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}-checkpoints")


def _fingerprint(
    params: TrainParams,
    class_names: list[str],
    meta: ArraysMeta,
    pretrained: WeightsFile | None = None,
    task: str = "classification",
) -> str:
    # what makes two runs the same run: a checkpoint of another config is never resumed
    keep = params.model_dump(exclude={"num_workers"})
    shape = list(meta.shape)
    run = {"train": keep, "classes": class_names, "data": meta.data_hash, "shape": shape}
    if task != "classification":  # (classification's fingerprints stay as they were)
        run["task"] = task
    if pretrained is not None:  # the file's content, not only its name
        run["pretrained_sha256"] = pretrained.sha256
    blob = json.dumps(run, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _is_rank_zero_launcher() -> bool:
    # Lightning's "ddp" launcher re-runs this command with LOCAL_RANK/NODE_RANK set
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _prepare_checkpoints(ckpt_dir: Path, fingerprint: str) -> bool:
    """Keep ckpt_dir only if it holds checkpoints of this very run; True when resuming."""
    run_file = ckpt_dir / RUN_FILE
    same = run_file.is_file() and json.loads(run_file.read_text()).get("fingerprint") == fingerprint
    if _is_rank_zero_launcher():
        if not same and ckpt_dir.exists():
            log.info("discarding checkpoints of another config in %s", ckpt_dir)
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_file, {"fingerprint": fingerprint})
    return same and any(ckpt_dir.glob("member-*/last.ckpt"))


def _auroc(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    from torchmetrics.functional.classification import multiclass_auroc

    probs = logits.softmax(-1)
    return float(multiclass_auroc(probs, y, num_classes=num_classes, average="macro"))


class _FromEpoch:
    """Mixin for Lightning's ModelCheckpoint and EarlyStopping: inactive before `start_epoch`.
    (Module-level classes: DDP spawn pickles the callbacks.)"""

    def __init__(self, start_epoch: int, **kwargs: object) -> None:
        self.start_epoch = start_epoch
        super().__init__(**kwargs)  # type: ignore[call-arg]

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.start_epoch:
            super().on_validation_end(trainer, module)  # type: ignore[misc]

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.start_epoch:
            super().on_train_epoch_end(trainer, module)  # type: ignore[misc]


class SettledCheckpoint(_FromEpoch, ModelCheckpoint):
    pass


class SettledEarlyStopping(_FromEpoch, EarlyStopping):
    pass


def run_train(
    params: TrainParams,
    class_names: list[str],
    arrays_dir: Path,
    out_dir: Path,
    checkpoint_dir: Path | None = None,
    callbacks: Sequence[pl.Callback] = (),
    root: Path | None = None,
    progress: Progress | None = None,
    live_dir: Path | None = None,
) -> TrainResult:
    """Fit the classifier (`accelerator="auto"`, `params.strategy`/`devices`) within
    `params.time_budget_minutes`: the epochs and the members of the ensemble follow from the
    measured speed of the first steps (models.budget). Each member keeps its best checkpoint by
    `params.monitor`; their mean logits over the test-time views are calibrated on val as one
    model (models.ensemble, models.calibration). An interrupted run of the same config resumes
    from its checkpoints, with the plan it started with.

    `callbacks` are added to each Trainer's (tests use one to interrupt a run). `root` is
    where a relative `params.pretrained_weights` is found (default: the current directory).
    Each epoch logs one line (models.progress) and calls `progress(epochs done, epochs in all)`.
    Given `live_dir`, the per-epoch train loss, val loss and val AUROC also go there as
    dvclive's metrics.json and plots/metrics/*.tsv (models.curves; the train stage's DVC plots).
    """
    started = time.monotonic()
    pretrained = find_weights(params.pretrained_weights, Path(root or "."))
    quiet_lightning()
    meta = read_meta(arrays_dir)
    dm, weights = _data(params, class_names, arrays_dir)
    x_train = dm.data["train"].tensors[0]
    in_channels, image_size = int(x_train.shape[1]), int(x_train.shape[-1])
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(out_dir)
    resume = _prepare_checkpoints(ckpt_dir, _fingerprint(params, class_names, meta, pretrained))

    def classifier(member_params: TrainParams) -> Classifier:
        pl.seed_everything(member_params.seed, workers=True, verbose=False)
        return Classifier(
            in_channels, len(class_names), member_params, class_weights=weights,
            image_size=image_size,
        )  # fmt: skip

    plan = _plan(params, dm, ckpt_dir, lambda: classifier(params).net)
    guard = [BudgetGuard(time.time() + plan.budget_seconds)] if plan.budget_seconds else []
    members: list[Member] = []
    k, more = 0, True
    while more:
        member_params = params.model_copy(
            update={"max_epochs": plan.epochs, "seed": params.seed + k}
        )
        dm.params = member_params  # the member's seed orders its batches
        model = classifier(member_params)
        loaded = load_pretrained(model.net, pretrained, params.architecture) if pretrained else None
        fit_callbacks = [*callbacks, *guard]
        member = _fit_member(
            k, plan, model, dm, ckpt_dir, fit_callbacks, progress, live_dir, resume
        )
        k += 1
        if member is not None:  # None: another DDP rank (rank 0 writes the artifact)
            members.append(member)
        more = _another_member(params, plan, members, k)
    if not members:
        return TrainResult(out_dir, out_dir / "checkpoints" / "best.ckpt", float("nan"), 0)

    views = tta_views(params.augment) if params.tta else []
    shift = params.augment.max_shift // 2
    net = assemble([m.net for m in members], views, shift)
    x_val, y_val = dm.data["val"].tensors
    logits = logits_of(net, x_val)  # the ensemble over its views: one pass over val
    best = _auroc(logits, y_val, len(class_names))
    calibration = select_calibration(params.calibration, logits, y_val, seed=params.seed)
    fold_calibration(net, calibration)
    spent = time.monotonic() - started
    epochs = sum(m.epochs for m in members)
    run = {
        "class_weights": weights,
        "best_val_auroc": best,
        "member_val_auroc": [m.val_auroc for m in members],
        "calibration": calibration.as_dict(),
        "epochs_run": epochs,
        "plan": {
            **plan.as_dict(),
            "members_trained": len(members),
            "seconds_spent": round(spent, 1),
        },
        "resumed": resume,
        "pretrained_weights": loaded,
    }
    trainer = next((m.trainer for m in members if m.trainer), None)
    trainer = trainer or _trainer(params, ckpt_dir, [], [])  # what it would run on
    spec = _spec(params, class_names, in_channels, meta, trainer, run)
    spec = dataclasses.replace(spec, members=len(members), tta=views, tta_shift=shift)
    _write_artifact(out_dir, ckpt_dir, net, spec, [m.checkpoint for m in members])
    budget = f" of the {clock(plan.budget_seconds)} budget" if plan.budget_seconds else ""
    log.info(
        "trained %d member(s), %d epochs in all, on %s in %s%s; val AUROC %.4f%s",
        len(members),
        epochs,
        type(trainer.accelerator).__name__,
        clock(spent),
        budget,
        best,
        f" (test-time views: {', '.join(views)})" if len(views) > 1 else "",
    )
    return TrainResult(
        model_dir=out_dir,
        best_checkpoint=out_dir / "checkpoints" / "best.ckpt",
        best_val_auroc=best,
        epochs_run=epochs,
    )


def _another_member(params: TrainParams, plan: Plan, members: list[Member], k: int) -> bool:
    """Whether to train member k+1. In one process, by the time the members took so far: one
    more if their mean still fits in the planned share of the budget (at most ensemble_max),
    so that a machine busier or idler than the first steps showed gets fewer or more members.
    Under DDP (where every rank must decide alike) and without a budget, by the plan."""
    single = bool(members) and all(m.world_size == 1 for m in members)
    if plan.budget_seconds is None or not single:
        return k < plan.members
    spent = sum(m.seconds for m in members)
    mean = spent / len(members)
    return k < params.ensemble_max and spent + mean <= plan.budget_seconds * PLANNED_SHARE


@dataclass
class Member:
    """One trained network of the ensemble (the best checkpoint loaded, on the CPU)."""

    net: torch.nn.Module
    checkpoint: Path
    val_auroc: float
    epochs: int
    seconds: float  # the fit's wall time (of the run that trained it)
    world_size: int  # processes the fit ran on
    trainer: pl.Trainer | None  # None: finished by an earlier, interrupted run


PLAN_FILE = "plan.json"


def _plan(
    params: TrainParams,
    dm: pl.LightningDataModule,
    ckpt_dir: Path,
    network: Callable[[], torch.nn.Module],
    loss: StepLoss | None = None,
) -> Plan:
    """The plan stored with the checkpoints (a resumed run, another DDP rank), else a new one
    from the measured speed of `network`'s training steps (`loss`: models.budget), stored
    there. `dm.data[split]` holds (images, targets) tensors."""
    path = ckpt_dir / PLAN_FILE
    if path.is_file():
        plan = Plan(**json.loads(path.read_text()))
        log.info("plan (kept from the run being resumed): %s", _describe(plan))
        return plan
    x, y = dm.data["train"].tensors
    step_s = 0.0
    if params.time_budget_minutes is not None:
        step_s = measure_step_seconds(network(), params, x, y, loss=loss)
    plan = plan_training(params, len(y), len(dm.data["val"].tensors[1]), step_s)
    if _is_rank_zero_launcher():
        write_json_atomic(path, plan.as_dict())
    log.info("plan: %s", _describe(plan))
    return plan


def _describe(plan: Plan) -> str:
    text = f"{plan.members} member(s) of {plan.epochs} epochs ({plan.steps_per_epoch} steps each)"
    if plan.budget_seconds:
        text += (
            f"; {plan.seconds_per_step:.3f} s/step measured, about"
            f" {clock(plan.planned_seconds)} of the {clock(plan.budget_seconds)} budget"
        )
    return f"{text}: {plan.reason}"


def _fit_member(
    k: int,
    plan: Plan,
    model: Classifier,
    dm: ArrayDataModule,
    ckpt_dir: Path,
    callbacks: list[pl.Callback],
    progress: Progress | None,
    live_dir: Path | None,
    resume: bool,
) -> Member | None:
    """Fit member k (or resume it, or load it when an earlier run finished it) in
    ckpt_dir/member-k; None on DDP ranks other than zero."""
    params = model.params
    member_dir = ckpt_dir / f"member-{k}"
    done_file = member_dir / "done.json"
    label = f"member {k + 1}: " if plan.members > 1 or k else ""
    trainer: pl.Trainer | None = None
    if not done_file.is_file():
        report = None
        if progress is not None:
            total = max(plan.members, k + 1) * plan.epochs
            report = lambda done, _: progress(k * plan.epochs + done, total)  # noqa: E731
        epoch_line = EpochProgress(report, label, max(plan.members - k - 1, 0) * plan.epochs)
        loggers = _loggers(ckpt_dir, live_dir, resume or k > 0, k * plan.epochs)
        trainer = _trainer(params, member_dir, [*callbacks, epoch_line], loggers)
        last = member_dir / "last.ckpt"
        if last.is_file():
            log.info("%sresuming an interrupted run from %s", label, last)
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
    best_path = member_dir / "best.ckpt"
    if not best_path.is_file():  # stopped by the budget before the settled half
        best_path = member_dir / "last.ckpt"
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    model.cpu()
    x_val, y_val = dm.data["val"].tensors
    auroc = _auroc(logits_of(model.net, x_val), y_val, int(model.hparams["num_classes"]))
    log.info("%sval AUROC %.4f after %d epochs", label, auroc, done["epochs"])
    return Member(
        model.net, best_path, auroc, done["epochs"], done["seconds"], done["world_size"], trainer
    )


def _data(
    params: TrainParams, class_names: list[str], arrays_dir: Path
) -> tuple[ArrayDataModule, list[float] | None]:
    """The DataModule of the arrays, checked against the class names, and the class weights
    of the loss (None unless params.imbalance is weighted_loss)."""
    dm = ArrayDataModule(arrays_dir, params)
    dm.setup()
    for split in ("train", "val"):
        labels = dm.data[split].tensors[1]
        if len(labels) == 0:
            raise ValueError(f"the {split} split is empty; check data.split fractions")
        bad = sorted(set(labels.tolist()) - set(range(len(class_names))))
        if bad:
            raise ValueError(
                f"labels {bad} in the {split} split are outside data.class_names {class_names}"
            )
    weights = None
    if params.imbalance == "weighted_loss":
        weights = class_weights(dm.data["train"].tensors[1].numpy(), len(class_names))
        log.info("class weights %s", [round(w, 3) for w in weights])
    return dm, weights


def _loggers(ckpt_dir: Path, live_dir: Path | None, resume: bool, offset: int = 0) -> list[Logger]:
    """The artifact's CSV logs (`logs/version_N/metrics.csv`, a version per member and per
    resumption) and, given `live_dir`, the DVC plots, whose epochs count on by `offset` (the
    epochs of earlier members); `resume` adds to the curves already there."""
    loggers: list[Logger] = [CSVLogger(ckpt_dir, name="logs")]
    if live_dir is not None:
        from medflow.models.curves import EpochCurves  # imports dvc: only when asked for

        loggers.append(EpochCurves(Path(live_dir), resume=resume, offset=offset))
    return loggers


def _trainer(
    params: TrainParams,
    ckpt_dir: Path,
    callbacks: Sequence[pl.Callback],
    loggers: list[Logger],
    monitor: str | None = None,
) -> pl.Trainer:
    """The Trainer with its early stopping and its best and latest checkpoints in ckpt_dir,
    following `monitor` (default: params.monitor; a loss is minimised, a score maximised)."""
    monitor = monitor or params.monitor
    mode = "min" if monitor == "val_loss" else "max"
    # The one-cycle rate peaks at 30% of the run and validation is noisy until it comes
    # down: the best model is chosen, and early stopping decided, in the second half only.
    settled = params.max_epochs // 2
    checkpoint = SettledCheckpoint(
        settled,
        dirpath=ckpt_dir,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        enable_version_counter=False,
    )
    # Lightning 2.6 writes save_last's last.ckpt only in epochs that improve the monitored
    # metric; resuming needs the latest epoch, so a second, unmonitored checkpoint keeps it.
    # It comes after `checkpoint` so that its file holds this epoch's best-model state.
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", enable_version_counter=False)
    return pl.Trainer(
        accelerator="auto",
        strategy=params.strategy,
        devices=params.devices,
        num_nodes=params.num_nodes,
        precision=_precision(),
        deterministic=True,
        max_epochs=params.max_epochs,
        callbacks=[
            SettledEarlyStopping(
                settled,
                monitor=monitor,
                mode=mode,
                patience=params.early_stopping_patience,
            ),
            checkpoint,
            latest,
            *callbacks,
        ],
        logger=loggers,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )


def _spec(
    params: TrainParams,
    class_names: list[str],
    in_channels: int,
    meta: ArraysMeta,
    trainer: pl.Trainer,
    run: dict[str, object],
) -> ModelSpec:
    """model.json: the network, its preprocessing, and how it was trained (`run`)."""
    return ModelSpec(
        architecture=params.architecture,
        in_channels=in_channels,
        num_classes=len(class_names),
        width=params.width,
        dropout=params.dropout,
        class_names=list(class_names),
        preprocess=meta.preprocess.model_dump(),
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


def _write_artifact(
    out_dir: Path, ckpt_dir: Path, net: torch.nn.Module, spec: ModelSpec, best: list[Path]
) -> None:
    """Replace out_dir with the model, the members' best checkpoints (best.ckpt, then
    best-member-2.ckpt...) and the logs; drop the checkpoints."""
    with atomic_dir(out_dir) as tmp:
        (tmp / "checkpoints").mkdir()
        for k, path in enumerate(best):
            name = "best.ckpt" if k == 0 else f"best-member-{k + 1}.ckpt"
            shutil.copy2(path, tmp / "checkpoints" / name)
        shutil.copytree(ckpt_dir / "logs", tmp / "logs")
        save_model(tmp, net, spec)
    # finished: the next run of this config starts afresh (dvc repro -f retrains)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
