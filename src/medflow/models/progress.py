"""One log line per training epoch that a person can follow: losses, val metric, time left."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import pytorch_lightning as pl

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (epochs done, max_epochs)


def clock(seconds: float) -> str:
    """`seconds` as m:ss, or h:mm:ss from an hour on."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _value(metrics: dict[str, object], name: str) -> str:
    value = metrics.get(name)
    number = float(value) if value is not None else math.nan  # type: ignore[arg-type]
    return "-" if math.isnan(number) else f"{number:.4f}"


class EpochProgress(pl.Callback):
    """After each training epoch (its validation included), log on rank zero:

        epoch 3/40: train loss 0.4120, val loss 0.3880, val AUROC 0.9530; 0:42 elapsed,
        about 9:48 left

    The time left is the mean epoch time of this run so far times the epochs up to
    max_epochs and `epochs_after` (the ensemble's members still to train); the first line
    adds that early stopping may end sooner. `label` starts the line ("member 2/3: ").
    `report`, when given, is called with (epochs done, max_epochs) after each line (the
    Prefect flow's progress). `metric` is the logged val metric shown and its name in the
    line (segmentation: ("val_dice", "val Dice")).
    (A module-level class: DDP spawn pickles the callbacks.)
    """

    def __init__(
        self,
        report: Progress | None = None,
        label: str = "",
        epochs_after: int = 0,
        metric: tuple[str, str] = ("val_auroc", "val AUROC"),
    ) -> None:
        self.report = report
        self.metric = metric
        self.label = label  # e.g. "member 2/3: "
        self.epochs_after = epochs_after  # epochs of the members still to come
        self._start = 0.0
        self._first_epoch = 0

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = time.monotonic()
        self._first_epoch = trainer.current_epoch  # not 0 when resuming

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        done = trainer.current_epoch + 1
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        elapsed = time.monotonic() - self._start
        m = trainer.callback_metrics
        line = (
            f"{self.label}epoch {done}/{total or '?'}: train loss {_value(m, 'train_loss')}, "
            f"val loss {_value(m, 'val_loss')}, {self.metric[1]} {_value(m, self.metric[0])}; "
            f"{clock(elapsed)} elapsed"
        )
        if total is not None:
            mean = elapsed / (done - self._first_epoch)
            line += f", about {clock(mean * (max(total - done, 0) + self.epochs_after))} left"
            if done == self._first_epoch + 1 and done < total:
                line += " (early stopping may end sooner)"
        log.info("%s", line)
        if self.report is not None and total is not None:
            self.report(done, total)
