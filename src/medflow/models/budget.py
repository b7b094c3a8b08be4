"""How long to train, from `train.time_budget_minutes` and the measured speed of this machine.

A few training steps of the real network on real batches are timed (after two warm-up steps),
and one validation pass is estimated from them. Then:

- epochs per member: enough for `target_steps` optimiser steps, at most `max_epochs`, and no
  more than the budget holds;
- members of the ensemble (each its own seed): as many whole members as the budget holds, at
  most `ensemble_max`.

Without a budget (`time_budget_minutes: null`) a run is one member of `max_epochs` epochs.
Early stopping can still end a member sooner, and so does `BudgetGuard` when the next epoch
would end past the budget (an estimate from a few steps can be wrong by a fifth). The plan
goes into model.json, with the time spent, and is kept with the checkpoints: a resumed run
follows the plan it started with.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from medflow.config import TrainParams
from medflow.models.augment import augment_batch

# the share of the budget planned for; the rest absorbs the noise of the estimate and the
# calibration after the fit
PLANNED_SHARE = 0.9

log = logging.getLogger(__name__)
WARMUP_STEPS = 2
TIMED_STEPS = 8


@dataclass(frozen=True)
class Plan:
    """What a training run does, and why."""

    epochs: int
    members: int
    steps_per_epoch: int
    seconds_per_step: float
    seconds_per_epoch: float
    budget_seconds: float | None
    reason: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def planned_seconds(self) -> float:
        return self.epochs * self.members * self.seconds_per_epoch


# a training step's loss: (network, images, targets, generator of the augmentation) -> loss
StepLoss = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def measure_step_seconds(
    net: torch.nn.Module,
    params: TrainParams,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device | None = None,
    loss: StepLoss | None = None,
) -> float:
    """Seconds per training step (augmentation, forward, backward, AdamW) of a copy of `net`
    on batches of the training images; `net` itself is left as it was. `loss` is the step's
    augmentation and loss (default: the classifier's, cross-entropy on labels `y`)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    probe = copy.deepcopy(net).to(device).train()
    channels_last = device.type == "cpu"  # as the fit does in one process
    if channels_last:
        probe = probe.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(probe.parameters(), lr=params.learning_rate)
    gen = torch.Generator(device=device).manual_seed(params.seed)
    n = len(x)
    times: list[float] = []
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        idx = torch.arange(step * params.batch_size, (step + 1) * params.batch_size) % n
        xb, yb = x[idx].float().to(device), y[idx].to(device)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if loss is None:
            value = F.cross_entropy(probe(augment_batch(xb, params.augment, gen)), yb.long())
        else:
            value = loss(probe, xb, yb, gen)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]  # the median: robust to one slow step


def plan_training(params: TrainParams, n_train: int, n_val: int, seconds_per_step: float) -> Plan:
    """The epochs and members `params` asks for, given this machine's speed."""
    steps = max(1, math.ceil(n_train / params.batch_size))
    # validation: a forward pass only, about a third of a training step per batch
    val_steps = max(1, math.ceil(n_val / params.batch_size))
    epoch_s = steps * seconds_per_step + val_steps * seconds_per_step / 3
    budget = params.time_budget_minutes
    if budget is None:
        return Plan(params.max_epochs, 1, steps, seconds_per_step, epoch_s, None, "no time budget")
    budget_s = budget * 60.0
    affordable = int(budget_s * PLANNED_SHARE // epoch_s)
    wanted = min(params.max_epochs, max(1, math.ceil(params.target_steps / steps)))
    if affordable < wanted:
        epochs = max(1, affordable)
        reason = f"the budget holds {affordable} of the {wanted} epochs wanted" + (
            "; training one epoch anyway, over budget" if affordable < 1 else ""
        )
        return Plan(epochs, 1, steps, seconds_per_step, epoch_s, budget_s, reason)
    members = max(1, min(params.ensemble_max, affordable // wanted))
    reason = (
        f"{wanted} epochs reach {min(wanted * steps, params.target_steps)} steps"
        + (f" (max_epochs {params.max_epochs})" if wanted == params.max_epochs else "")
        + f"; the budget holds {affordable // wanted} such member(s)"
        + (f", at most {params.ensemble_max}" if affordable // wanted > members else "")
    )
    return Plan(wanted, members, steps, seconds_per_step, epoch_s, budget_s, reason)


class BudgetGuard(pl.Callback):
    """Stop a fit after the epoch whose successor would end past `deadline` (time.time()), by
    this fit's mean epoch time. Every rank decides alike (Lightning's reduced decision).
    (A module-level class: DDP spawn pickles the callbacks.)"""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._start = 0.0
        self._first_epoch = 0
        self.stopped_epoch: int | None = None

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = time.time()
        self._first_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        now = time.time()
        mean = (now - self._start) / (trainer.current_epoch + 1 - self._first_epoch)
        past = trainer.strategy.reduce_boolean_decision(now + mean > self.deadline, all=False)
        if past and trainer.current_epoch + 1 < (trainer.max_epochs or 0):
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch + 1
            log.info(
                "time budget: stopping after epoch %d of %d (the next would end past it)",
                trainer.current_epoch + 1,
                trainer.max_epochs,
            )
