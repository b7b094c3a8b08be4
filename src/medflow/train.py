"""The train stage: a Lightning fit on the preprocessed arrays; writes the model artifact."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from medflow.config import PreprocessParams, TrainParams
from medflow.io import atomic_dir
from medflow.models.artifact import ModelSpec, save_model
from medflow.models.lightning import ArrayDataModule, Classifier
from medflow.preprocess_stage import META_FILE
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


def run_train(
    params: TrainParams, class_names: list[str], arrays_dir: Path, out_dir: Path
) -> TrainResult:
    """Fit the classifier with `accelerator="auto"`; keep the best checkpoint by val AUROC."""
    quiet_lightning()
    meta = json.loads((arrays_dir / META_FILE).read_text())
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
    in_channels = int(dm.data["train"].tensors[0].shape[1])

    with atomic_dir(out_dir) as tmp:
        pl.seed_everything(params.seed, workers=True, verbose=False)
        model = Classifier(in_channels, len(class_names), params)
        checkpoint = ModelCheckpoint(
            dirpath=tmp / "checkpoints",
            filename="best",
            monitor="val_loss",
            mode="min",
            save_top_k=1,
            save_last=True,
        )
        trainer = pl.Trainer(
            accelerator="auto",
            devices=1,
            precision=_precision(),
            deterministic=True,
            max_epochs=params.max_epochs,
            callbacks=[
                checkpoint,
                EarlyStopping(
                    monitor="val_loss", mode="min", patience=params.early_stopping_patience
                ),
            ],
            logger=CSVLogger(tmp, name="logs", version=0),
            enable_progress_bar=False,
            enable_model_summary=False,
            log_every_n_steps=1,
        )
        trainer.fit(model, datamodule=dm)
        best_path = Path(checkpoint.best_model_path)
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
        # selected on val loss (ranking *and* calibration); report that model's val AUROC
        best = float(trainer.validate(model, datamodule=dm, verbose=False)[0]["val_auroc"])
        preprocess = PreprocessParams.model_validate(meta["preprocess"])
        spec = ModelSpec(
            architecture="SmallCNN",
            in_channels=in_channels,
            num_classes=len(class_names),
            width=params.width,
            dropout=params.dropout,
            class_names=list(class_names),
            preprocess=preprocess.model_dump(),
            provenance={
                "data_hash": meta["data_hash"],
                "counts": meta["counts"],
                "train_params": params.model_dump(),
                "best_val_auroc": best,
                "epochs_run": int(trainer.current_epoch),
                "git_revision": git_revision(),
                "library_versions": library_versions(),
                "accelerator": type(trainer.accelerator).__name__,
            },
        )
        save_model(tmp, model.net, spec)
        epochs = int(trainer.current_epoch)
    log.info(
        "trained %d epochs on %s; best val AUROC %.4f",
        epochs,
        type(trainer.accelerator).__name__,
        best,
    )
    return TrainResult(
        model_dir=out_dir,
        best_checkpoint=out_dir / "checkpoints" / best_path.name,
        best_val_auroc=best,
        epochs_run=epochs,
    )
