"""The segmentation LightningModule (a MONAI U-Net, soft Dice + per-segment BCE) and the
DataModule of images with their masks."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch.utils.data import DataLoader, TensorDataset

from medflow.config import TrainParams
from medflow.data.arrays import load_masks, load_split
from medflow.models.lightning import MAX_IN_MEMORY_BYTES, ArrayDataModule, EpochSampler, _epoch_seed
from medflow.models.net import build_unet
from medflow.models.seg_augment import augment_pair

# the threshold of val_dice; evaluation applies evaluate.mask_threshold to the served model
VAL_THRESHOLD = 0.5


def dice_per_image(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Hard Dice of each image (N, K, H, W logits against 0/1 masks) at probability 0.5,
    the mean over its segments; a segment empty in both truth and prediction scores 1."""
    pred = logits > 0  # sigmoid(z) >= 0.5 (ties aside)
    truth = masks > 0.5
    inter = (pred & truth).sum(dim=(2, 3)).float()
    total = (pred.sum(dim=(2, 3)) + truth.sum(dim=(2, 3))).float()
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    return dice.mean(dim=1)


class SegmentationLoss(torch.nn.Module):
    """dice_weight * soft Dice + ce_weight * binary cross-entropy, both per segment on the
    sigmoid of the logits (segments may overlap: no softmax across them). The Dice is over the
    batch as a whole ("batch Dice"): an image without lesions then adds false positives to
    the denominator instead of a Dice of its own that is 0 or 1."""

    def __init__(self, dice_weight: float, ce_weight: float) -> None:
        super().__init__()
        self.dice_weight, self.ce_weight = dice_weight, ce_weight
        self.dice = DiceLoss(sigmoid=True, batch=True)

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        masks = masks.to(logits.dtype)
        loss = logits.new_zeros(())
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, masks)
        if self.ce_weight:
            loss = loss + self.ce_weight * F.binary_cross_entropy_with_logits(logits, masks)
        return loss


class Segmenter(pl.LightningModule):
    """U-Net segmenter: SegmentationLoss, AdamW with a one-cycle schedule; logs train_loss,
    val_loss and val_dice (dice_per_image, the mean over val images).

    As Classifier, randomness (augmentation, dropout) is re-seeded from (seed, epoch, batch,
    rank) before every training batch, so a resumed run continues as the uninterrupted one.
    """

    def __init__(self, in_channels: int, num_segments: int, params: TrainParams) -> None:
        super().__init__()
        self.save_hyperparameters(
            {
                "in_channels": in_channels,
                "num_segments": num_segments,
                "train": params.model_dump(),
            }
        )
        self.params = params
        self.net = build_unet(in_channels, num_segments, params.unet_channels, params.dropout)
        self.loss = SegmentationLoss(params.dice_weight, params.ce_weight)
        self._generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_batch_start(self, batch: object, batch_idx: int) -> None:
        seed = _epoch_seed(self.params.seed, self.current_epoch, self.global_rank)
        seed = (seed * 7_919 + batch_idx) % 2**63
        torch.manual_seed(seed)
        self._generator = torch.Generator(device=self.device).manual_seed(seed)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, masks = batch
        if self._generator is None:  # training_step called outside fit
            self.on_train_batch_start(batch, batch_idx)
        x, masks = augment_pair(x, masks, self.params.augment, self._generator)
        loss = self.loss(self(x), masks)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, masks = batch
        logits = self(x)
        n = len(x)
        self.log("val_loss", self.loss(logits, masks), prog_bar=True, sync_dist=True, batch_size=n)
        dice = dice_per_image(logits.float(), masks).mean()
        self.log("val_dice", dice, prog_bar=True, sync_dist=True, batch_size=n)

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


def _tensor(a: np.ndarray) -> torch.Tensor:
    # in RAM when small enough, else the read-only memmap (torch warns, never writes)
    if a.nbytes <= MAX_IN_MEMORY_BYTES:
        return torch.from_numpy(np.array(a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


class MaskDataModule(ArrayDataModule):
    """Images and their masks (`<split>_x.npy`, `<split>_m.npy`) in memory; train/val
    loaders of (image, mask) batches. `labels` (`<split>_y.npy`: the highest class in each
    mask) weight the train batches when train.imbalance is balanced_sampler."""

    def __init__(self, arrays_dir: Path, params: TrainParams):
        super().__init__(arrays_dir, params)
        self.labels: dict[str, torch.Tensor] = {}

    def setup(self, stage: str | None = None) -> None:
        """Load the train and val images, masks and labels (once)."""
        if getattr(self, "data", None):
            return
        self.data = {}
        for split in ("train", "val"):
            x, y = load_split(self.arrays_dir, split)
            masks = load_masks(self.arrays_dir, split)
            self.data[split] = TensorDataset(_tensor(x), _tensor(masks))
            self.labels[split] = torch.from_numpy(np.asarray(y)).long()

    def train_dataloader(self) -> DataLoader:
        """Train batches in the epoch-seeded order (weighted by label if balanced_sampler)."""
        labels = self.labels["train"]
        weights = None
        if self.params.imbalance == "balanced_sampler":
            weights = (1.0 / torch.bincount(labels).double())[labels]
        return self._loader("train", EpochSampler(len(labels), self.params.seed, weights))


@torch.inference_mode()
def predict_logits(net: torch.nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The network's logits for images x (N, C, S, S), in eval mode, in batches."""
    net = net.eval()
    return torch.cat([net(x[i : i + batch_size].float()) for i in range(0, len(x), batch_size)])
