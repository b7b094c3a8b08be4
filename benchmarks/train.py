"""Lightning's cost per epoch against a bare PyTorch loop, same model and data, in one run.

Both train medflow's default network (train.architecture / width from --params) on the same
in-memory random images with the same batch size, optimiser (AdamW + one-cycle), loss and
epoch-seeded sampler, with no augmentation and no validation loop in either, on the device
Lightning's accelerator="auto" picks. The first epoch of each (warm-up: allocator, thread
pools, Lightning's setup) is not counted; each side's figure is its best epoch of --epochs.

With --task segmentation the same comparison is made for the U-Net (models.seg_lightning's
Segmenter: train.unet_channels, Dice + BCE loss) on random images with random masks.

Target: Lightning's seconds per epoch <= 1.05x the bare loop's. It reports, it does not
gate: the exit code is 0 whether the target is met or missed.

    .venv/bin/python benchmarks/train.py                    # 2,048 images of 64 px, 4 epochs
    .venv/bin/python benchmarks/train.py --quick            # 512 images, 3 epochs
    .venv/bin/python benchmarks/train.py --task segmentation --quick   # the U-Net
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from medflow.config import AugmentParams, TrainParams, load_params
from medflow.models.lightning import Classifier, EpochSampler
from medflow.models.net import build_network, build_unet
from medflow.models.seg_lightning import SegmentationLoss, Segmenter
from medflow.models.training import _precision, quiet_lightning

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.05
NO_AUGMENT = AugmentParams(max_shift=0, max_rotation=0, max_scale=0, brightness=0, contrast=0)


class _EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, *_: object) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, *_: object) -> None:
        self.seconds.append(time.perf_counter() - self._t0)


def _data(n: int, size: int, task: str = "classification") -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size, size, generator=g)
    if task == "segmentation":  # uint8 masks, as MaskDataModule holds them
        return TensorDataset(x, (torch.rand(n, 1, size, size, generator=g) > 0.9).byte())
    return TensorDataset(x, torch.arange(n) % 2)


def _loader(data: TensorDataset, params: TrainParams) -> DataLoader:
    sampler = EpochSampler(len(data), params.seed)
    return DataLoader(data, batch_size=params.batch_size, sampler=sampler)


def lightning_epochs(
    data: TensorDataset, params: TrainParams, epochs: int, task: str = "classification"
) -> list[float]:
    """Seconds of each epoch of a Trainer.fit of medflow's Classifier (or Segmenter)."""
    quiet_lightning()
    pl.seed_everything(params.seed, verbose=False)
    timer = _EpochTimer()
    trainer = pl.Trainer(
        accelerator="auto",
        devices=1,
        precision=_precision(),
        deterministic=True,
        max_epochs=epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    model = Segmenter(1, 1, params) if task == "segmentation" else Classifier(1, 2, params)
    trainer.fit(model, train_dataloaders=_loader(data, params))
    return timer.seconds


def bare_unet_epochs(data: TensorDataset, params: TrainParams, epochs: int) -> list[float]:
    """Seconds of each epoch of the U-Net's training written as a plain loop."""
    torch.manual_seed(params.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = build_unet(1, 1, params.unet_channels, params.dropout).to(device)
    loss_fn = SegmentationLoss(params.dice_weight, params.ce_weight)
    loader = _loader(data, params)
    opt = torch.optim.AdamW(
        net.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=params.learning_rate, total_steps=epochs * len(loader)
    )
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(_precision())
    seconds = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        net.train()
        loader.sampler.set_epoch(epoch)
        for x, masks in loader:
            x, masks = x.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(net(x), masks.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        seconds.append(time.perf_counter() - t0)
    return seconds


def bare_epochs(data: TensorDataset, params: TrainParams, epochs: int) -> list[float]:
    """Seconds of each epoch of the same training written as a plain loop."""
    torch.manual_seed(params.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = build_network(params.architecture, 1, 2, params.width, params.dropout).to(device)
    # channels_last, as Classifier trains in one process: the comparison is of Lightning
    # alone, not of memory formats (until 2026-11-29 only Lightning's side had it)
    net = net.to(memory_format=torch.channels_last)
    loader = _loader(data, params)
    opt = torch.optim.AdamW(
        net.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=params.learning_rate, total_steps=epochs * len(loader)
    )
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(_precision())
    seconds = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        net.train()
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        seconds.append(time.perf_counter() - t0)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=64, help="image rows and columns")
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs, after 1 warm-up")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--quick", action="store_true", help="512 images, 3 epochs")
    parser.add_argument(
        "--task", choices=("classification", "segmentation"), default="classification"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.epochs = 512, 3
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params).train.model_copy(update={"augment": NO_AUGMENT})
    if args.task == "segmentation":  # the U-Net trains at its own batch size and rate
        params = params.model_copy(
            update={
                "batch_size": params.unet_batch_size,
                "learning_rate": params.unet_learning_rate,
            }
        )
    data = _data(args.images, args.size, args.task)
    epochs = args.epochs + 1
    # one after the other in the same process; on a shared machine compare a few runs
    light = lightning_epochs(data, params, epochs, args.task)[1:]
    bare_loop = bare_unet_epochs if args.task == "segmentation" else bare_epochs
    bare = bare_loop(data, params, epochs)[1:]
    light_best, bare_best = min(light), min(bare)
    ratio = light_best / bare_best
    verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
    model = f"{params.architecture} width {params.width}"
    if args.task == "segmentation":
        model = f"unet channels {params.unet_channels}"
    print(
        f"{model}, {args.images} images of {args.size} px, "
        f"batch {params.batch_size}, {_precision()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    for name, best in (("bare loop", bare_best), ("Lightning", light_best)):
        rate = args.images / best
        print(f"{name:<10} best of {args.epochs}: {best:7.3f} s/epoch  {rate:7.1f} img/s")
    print(f"ratio Lightning / bare: {ratio:.3f}x  (target <= {TARGET_RATIO}x)  {verdict}")
    if args.json:
        args.json.write_text(
            json.dumps({"bare": bare, "lightning": light, "ratio": ratio, "verdict": verdict})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
