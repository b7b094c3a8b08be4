"""The LightningModule wrapping a plain network, and the in-memory DataModule."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torchmetrics.classification import MulticlassAUROC

from medflow.config import TrainParams
from medflow.data.arrays import load_split
from medflow.models.augment import augment_batch, random_shift
from medflow.models.net import build_network

__all__ = ["ArrayDataModule", "Classifier", "EpochSampler", "random_shift"]

# Arrays larger than this stay memory-mapped (the OS pages them in); smaller ones are copied
# into RAM once, so that batches are plain tensor slices.
MAX_IN_MEMORY_BYTES = 4 * 1024**3


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    # distinct, reproducible streams per (seed, epoch, rank); a resumed run derives the same
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


class Classifier(pl.LightningModule):
    """Image classifier: (weighted) cross-entropy, AdamW with a one-cycle schedule.

    Randomness (augmentation, dropout) is re-seeded from (seed, epoch, batch, rank) before
    every training batch, so a run resumed from a checkpoint continues exactly as the
    uninterrupted run would have: Lightning's checkpoints do not carry RNG states.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        params: TrainParams,
        class_weights: list[float] | None = None,
        image_size: int = 64,
    ):
        super().__init__()
        self.save_hyperparameters(
            {
                "in_channels": in_channels,
                "num_classes": num_classes,
                "train": params.model_dump(),
                "class_weights": class_weights,
                "image_size": image_size,
            }
        )
        self.params = params
        self.net = build_network(
            params.architecture,
            in_channels,
            num_classes,
            params.width,
            params.dropout,
            image_size=image_size,
        )
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.val_auroc = MulticlassAUROC(num_classes=num_classes, average="macro")
        self._generator: torch.Generator | None = None
        self._channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def on_fit_start(self) -> None:
        # NHWC, in one process only (why: docs/decisions/channels-last.md)
        self._channels_last = self.trainer.world_size == 1
        if self._channels_last:
            self.net.to(memory_format=torch.channels_last)

    def on_train_batch_start(self, batch: object, batch_idx: int) -> None:
        # per batch, not per epoch: Lightning and the DataLoader draw from the global RNG
        # between hooks, and not at the same points in a fresh and in a resumed run
        seed = _epoch_seed(self.params.seed, self.current_epoch, self.global_rank)
        seed = (seed * 7_919 + batch_idx) % 2**63
        torch.manual_seed(seed)  # dropout (and CUDA's generator with it)
        self._generator = torch.Generator(device=self.device).manual_seed(seed)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        if self._generator is None:  # training_step called outside fit
            self.on_train_batch_start(batch, batch_idx)
        x = augment_batch(x, self.params.augment, self._generator)
        loss = F.cross_entropy(
            self(x), y, weight=self.class_weights, label_smoothing=self.params.label_smoothing
        )
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.val_auroc.update(logits.float().softmax(-1), y)
        self.log("val_auroc", self.val_auroc, prog_bar=True)

    def configure_optimizers(self):  # noqa: ANN201 (Lightning's union return type)
        opt = torch.optim.AdamW(
            self.parameters(), lr=self.params.learning_rate, weight_decay=self.params.weight_decay
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=self.params.learning_rate,
            total_steps=self.trainer.estimated_stepping_batches,
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def class_weights(labels: np.ndarray, num_classes: int) -> list[float]:
    """Inverse class frequency, normalised so that a balanced set gets weight 1 everywhere."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        missing = [i for i in range(num_classes) if counts[i] == 0]
        raise ValueError(f"classes {missing} have no training image; cannot weight them")
    return (counts.sum() / (num_classes * counts)).tolist()


class EpochSampler(Sampler[int]):
    """Shuffles (or draws with replacement by weight) from a generator seeded by (seed,
    epoch): Lightning calls set_epoch before every epoch, so a resumed run sees the same
    order. Without set_epoch calls (e.g. wrapped for DDP) it advances an epoch per pass."""

    def __init__(self, n: int, seed: int, weights: torch.Tensor | None = None):
        self.n, self.seed, self.weights, self.epoch = n, seed, weights, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next pass draws."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        return iter(order.tolist())


class ArrayDataModule(pl.LightningDataModule):
    """Preprocessed arrays held in memory (memory-mapped when large); train/val loaders."""

    def __init__(self, arrays_dir: Path, params: TrainParams):
        super().__init__()
        self.arrays_dir = Path(arrays_dir)
        self.params = params

    def setup(self, stage: str | None = None) -> None:
        """Load the train and val arrays (once)."""
        if getattr(self, "data", None):
            return  # already loaded (run_train checks the labels before fit)
        self.data = {}
        for split in ("train", "val"):
            x, y = load_split(self.arrays_dir, split)
            if x.nbytes <= MAX_IN_MEMORY_BYTES:
                xt = torch.from_numpy(np.array(x))
            else:
                with warnings.catch_warnings():  # read-only memmap: torch warns, never writes
                    warnings.simplefilter("ignore", UserWarning)
                    xt = torch.from_numpy(x)
            self.data[split] = TensorDataset(xt, torch.from_numpy(y).long())

    def _loader(self, split: str, sampler: Sampler[int] | None = None) -> DataLoader:
        workers = self.params.num_workers
        return DataLoader(
            self.data[split],
            batch_size=self.params.batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Train batches in the epoch-seeded order (weighted by class if balanced_sampler)."""
        # Under DDP Lightning wraps the sampler in a DistributedSamplerWrapper (a shard each).
        labels = self.data["train"].tensors[1]
        weights = None
        if self.params.imbalance == "balanced_sampler":
            weights = (1.0 / torch.bincount(labels).double())[labels]
        return self._loader("train", EpochSampler(len(labels), self.params.seed, weights))

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in order."""
        return self._loader("val")
