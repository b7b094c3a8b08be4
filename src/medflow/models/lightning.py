"""The LightningModule wrapping a plain network, and the in-memory DataModule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAUROC

from medflow.config import TrainParams
from medflow.models.net import SmallCNN


def random_shift(
    x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Translate each image by up to max_shift pixels (zero fill), a safe augmentation for
    radiographs; done on the batch so it runs on whatever device the batch is on."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


class Classifier(pl.LightningModule):
    """Image classifier: cross-entropy on a SmallCNN, AdamW with a one-cycle schedule."""

    def __init__(self, in_channels: int, num_classes: int, params: TrainParams):
        super().__init__()
        self.save_hyperparameters(
            {"in_channels": in_channels, "num_classes": num_classes, "train": params.model_dump()}
        )
        self.params = params
        self.net = SmallCNN(in_channels, num_classes, params.width, params.dropout)
        self.val_auroc = MulticlassAUROC(num_classes=num_classes, average="macro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        aug = self.params.augment
        x = random_shift(x, aug.max_shift)
        if aug.horizontal_flip:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.val_auroc.update(logits.softmax(-1), y)
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


def load_split(arrays_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Arrays written by the preprocess stage, memory-mapped."""
    x_path, y_path = arrays_dir / f"{split}_x.npy", arrays_dir / f"{split}_y.npy"
    if not x_path.is_file() or not y_path.is_file():
        raise FileNotFoundError(
            f"no {split} arrays in {arrays_dir}: run the preprocess stage first"
        )
    return np.load(x_path, mmap_mode="r"), np.load(y_path)


class ArrayDataModule(pl.LightningDataModule):
    """Preprocessed arrays held in memory; train/val loaders."""

    def __init__(self, arrays_dir: Path, params: TrainParams):
        super().__init__()
        self.arrays_dir = Path(arrays_dir)
        self.params = params

    def setup(self, stage: str | None = None) -> None:
        self.data = {}
        for split in ("train", "val"):
            x, y = load_split(self.arrays_dir, split)
            self.data[split] = TensorDataset(
                torch.from_numpy(np.array(x)), torch.from_numpy(y).long()
            )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.data[split],
            batch_size=self.params.batch_size,
            shuffle=shuffle,
            num_workers=self.params.num_workers,
            persistent_workers=self.params.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
