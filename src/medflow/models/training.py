"""The train stage: a Lightning fit on the preprocessed arrays; writes the model artifact.

An interrupted run resumes from its checkpoints beside the output (`.models-checkpoints/`,
docs/training.md) when the next run has the same params and data. The per-epoch curves go to
the artifact's CSV logs and, given a folder, to dvclive's (the DVC plots of the train stage).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
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
from medflow.models.calibration import fit_temperature, fold_temperature, logits_of
from medflow.models.lightning import ArrayDataModule, Classifier, class_weights
from medflow.models.pretrained import WeightsFile, find_weights, load_pretrained
from medflow.models.progress import EpochProgress, Progress
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
) -> str:
    # what makes two runs the same run: a checkpoint of another config is never resumed
    keep = params.model_dump(exclude={"num_workers"})
    shape = list(meta.shape)
    run = {"train": keep, "classes": class_names, "data": meta.data_hash, "shape": shape}
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
    return same and (ckpt_dir / "last.ckpt").is_file()


def _auroc(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    from torchmetrics.functional.classification import multiclass_auroc

    probs = logits_of(net, x).softmax(-1)
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
    """Fit the classifier (`accelerator="auto"`, `params.strategy`/`devices`), resuming an
    interrupted run of the same config; keep the best checkpoint by `params.monitor`.

    `callbacks` are added to the Trainer's (tests use one to interrupt a run). `root` is
    where a relative `params.pretrained_weights` is found (default: the current directory).
    Each epoch logs one line (models.progress) and calls `progress(epoch, max_epochs)`.
    Given `live_dir`, the per-epoch train loss, val loss and val AUROC also go there as
    dvclive's metrics.json and plots/metrics/*.tsv (models.curves; the train stage's DVC plots).
    """
    pretrained = find_weights(params.pretrained_weights, Path(root or "."))
    quiet_lightning()
    meta = read_meta(arrays_dir)
    dm, weights = _data(params, class_names, arrays_dir)
    in_channels = int(dm.data["train"].tensors[0].shape[1])
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(out_dir)
    resume = _prepare_checkpoints(ckpt_dir, _fingerprint(params, class_names, meta, pretrained))
    pl.seed_everything(params.seed, workers=True, verbose=False)
    image_size = int(dm.data["train"].tensors[0].shape[-1])
    model = Classifier(
        in_channels, len(class_names), params, class_weights=weights, image_size=image_size
    )
    loaded = load_pretrained(model.net, pretrained, params.architecture) if pretrained else None
    loggers = _loggers(ckpt_dir, live_dir, resume)
    trainer = _trainer(params, ckpt_dir, [*callbacks, EpochProgress(progress)], loggers)
    if resume:
        log.info("resuming an interrupted run from %s", ckpt_dir / "last.ckpt")
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_dir / "last.ckpt" if resume else None)
    if not trainer.is_global_zero:
        # other DDP ranks: rank 0 writes the artifact
        return TrainResult(out_dir, out_dir / "checkpoints" / "best.ckpt", float("nan"), 0)

    best, temperature = _best_model(params, model, dm, ckpt_dir, len(class_names))
    epochs = (
        int(torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)["epoch"]) + 1
    )
    run = {
        "class_weights": weights,
        "best_val_auroc": best,
        "calibration": {"method": params.calibration, "temperature": temperature},
        "epochs_run": epochs,
        "resumed": resume,
        "pretrained_weights": loaded,
    }
    spec = _spec(params, class_names, in_channels, meta, trainer, run)
    _write_artifact(out_dir, ckpt_dir, model.net, spec)
    log.info(
        "trained %d epochs on %s; best val AUROC %.4f",
        epochs,
        type(trainer.accelerator).__name__,
        best,
    )
    return TrainResult(
        model_dir=out_dir,
        best_checkpoint=out_dir / "checkpoints" / "best.ckpt",
        best_val_auroc=best,
        epochs_run=epochs,
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


def _loggers(ckpt_dir: Path, live_dir: Path | None, resume: bool) -> list[Logger]:
    """The artifact's CSV logs (`logs/version_N/metrics.csv`) and, given `live_dir`, the DVC
    plots; a resumed run adds to the latter (the former gets a new version)."""
    loggers: list[Logger] = [CSVLogger(ckpt_dir, name="logs")]
    if live_dir is not None:
        from medflow.models.curves import EpochCurves  # imports dvc: only when asked for

        loggers.append(EpochCurves(Path(live_dir), resume=resume))
    return loggers


def _trainer(
    params: TrainParams,
    ckpt_dir: Path,
    callbacks: Sequence[pl.Callback],
    loggers: list[Logger],
) -> pl.Trainer:
    """The Trainer with its early stopping and its best and latest checkpoints in ckpt_dir."""
    mode = "min" if params.monitor == "val_loss" else "max"
    # The one-cycle rate peaks at 30% of the run and validation is noisy until it comes
    # down: the best model is chosen, and early stopping decided, in the second half only.
    settled = params.max_epochs // 2
    checkpoint = SettledCheckpoint(
        settled,
        dirpath=ckpt_dir,
        filename="best",
        monitor=params.monitor,
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
                monitor=params.monitor,
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


def _best_model(
    params: TrainParams,
    model: Classifier,
    dm: ArrayDataModule,
    ckpt_dir: Path,
    num_classes: int,
) -> tuple[float, float]:
    """Load the best checkpoint into `model` (on the CPU) and calibrate it on val;
    returns its val AUROC (before calibration) and the temperature folded into it."""
    best_path = ckpt_dir / "best.ckpt"
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    model.cpu()
    # selected on params.monitor; report that model's val AUROC
    x_val, y_val = dm.data["val"].tensors
    best = _auroc(model.net, x_val, y_val, num_classes)
    temperature = 1.0
    if params.calibration == "temperature":
        temperature = fit_temperature(logits_of(model.net, x_val), y_val)
        fold_temperature(model.net, temperature)
        log.info("calibration: temperature %.3f fitted on the val split", temperature)
    return best, temperature


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


def _write_artifact(out_dir: Path, ckpt_dir: Path, net: torch.nn.Module, spec: ModelSpec) -> None:
    """Replace out_dir with the model, its best checkpoint and logs; drop the checkpoints."""
    with atomic_dir(out_dir) as tmp:
        (tmp / "checkpoints").mkdir()
        shutil.copy2(ckpt_dir / "best.ckpt", tmp / "checkpoints" / "best.ckpt")
        shutil.copytree(ckpt_dir / "logs", tmp / "logs")
        save_model(tmp, net, spec)
    # finished: the next run of this config starts afresh (dvc repro -f retrains)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
