"""Calibration on the validation split, folded into the network's final linear layers.

temperature (Guo et al., 2017): logits / T, one scalar T > 0. platt (binary only): p =
sigmoid(a * (z1 - z0) + b), a > 0, which moves the decision point as well as the confidence.
Both keep the ranking (AUROC) and are linear in the logits, so they are folded into the last
nn.Linear of every member of the network: evaluation and the Bento apply them unawares
(why: docs/decisions/calibration.md). `auto` keeps, of none and temperature, the one with the
lowest negative log-likelihood cross-fitted on val (fitted on some folds, scored on the rest),
then fits it on the whole split; platt is not a candidate, since its bias moves the class
prior the network was trained with to val's (docs/decisions/calibration-shift.md).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from medflow.models.ensemble import members_of

logger = logging.getLogger(__name__)

# log T is searched in [-MAX_LOG_T, MAX_LOG_T]: T between 1/20 and 20
MAX_LOG_T = math.log(20.0)


@torch.inference_mode()
def logits_of(net: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The network's logits for x, in eval mode, computed in batches."""
    net = net.eval()
    return torch.cat([net(x[i : i + batch_size].float()) for i in range(0, len(x), batch_size)])


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, warn: bool = True) -> float:
    """The T minimising the negative log-likelihood of softmax(logits / T) on these labels.

    A golden-section search on log T within [-MAX_LOG_T, MAX_LOG_T]. When the search ends on
    its lower bound (a validation split the logits separate), T is not identifiable and 1.0 is
    returned, with a warning (why: docs/decisions/calibration.md).

    Raises:
        ValueError: the validation split is empty.
    """
    logits, labels = logits.detach().double(), labels.detach().long()
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on an empty validation split")

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    lo, hi = -MAX_LOG_T, MAX_LOG_T
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):  # interval shrinks to 1e-12 of its width
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    best = (lo + hi) / 2
    if best <= -MAX_LOG_T + 1e-6:
        if not warn:
            return 1.0
        logger.warning(
            "calibration: the validation split is separated by the network (%d images), so its"
            " temperature cannot be fitted there; left uncalibrated (T = 1). A larger"
            " validation split (data.split.val_fraction) or more data calibrates",
            len(labels),
        )
        return 1.0
    # never worse than leaving the network alone
    return math.exp(best) if nll(best) < nll(0.0) else 1.0


def final_linear(net: nn.Module) -> nn.Linear:
    """The network's last nn.Linear: the layer producing the logits."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no linear layer to fold a temperature into")
    return linears[-1]


@torch.no_grad()
def fold_temperature(net: nn.Module, temperature: float) -> None:
    """Make net(x) return logits / temperature, by scaling the final linear layer of each of
    its members in place."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    fold_affine(net, 1.0 / temperature, 0.0)


@torch.no_grad()
def fold_affine(net: nn.Module, scale: float, shift: float) -> None:
    """Make net(x) return logits * scale, plus `shift` on the last class's logit, by changing
    the final linear layer of each member in place (the mean of members' logits follows)."""
    if not scale > 0:
        raise ValueError(f"the logits' scale must be positive, got {scale}")
    for member in members_of(net):
        layer = final_linear(member)
        layer.weight.mul_(scale)
        if layer.bias is not None:
            layer.bias.mul_(scale)
            layer.bias[-1] += shift
        elif shift:
            raise ValueError(f"{type(member).__name__}'s head has no bias to shift")


def fit_platt(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(a, b) minimising the NLL of sigmoid(a * (z1 - z0) + b) on these binary labels
    (Newton's method on the two parameters, a kept positive); (1, 0) when it cannot improve
    on the logits as they are."""
    d = (logits[:, 1] - logits[:, 0]).detach().double()
    y = labels.detach().double()
    if len(y) == 0:
        raise ValueError("cannot fit Platt scaling on an empty validation split")
    x = torch.stack([d, torch.ones_like(d)], 1)

    def nll(w: torch.Tensor) -> float:
        return float(F.binary_cross_entropy_with_logits(x @ w, y))

    start = w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    for _ in range(100):  # Newton's steps, halved until the NLL falls (plain Newton diverges)
        p = torch.sigmoid(x @ w)
        grad = x.T @ (p - y) / len(y)
        hess = x.T @ (x * (p * (1 - p))[:, None]) / len(y)
        step = torch.linalg.lstsq(hess + 1e-9 * torch.eye(2, dtype=torch.float64), grad).solution
        t, now = 1.0, nll(w)
        while t > 1e-6 and not nll(w - t * step) < now:
            t /= 2
        if t <= 1e-6:
            break
        w = w - t * step
        if float((t * step).abs().max()) < 1e-10:
            break
    a, b = float(w[0]), float(w[1])
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 1e-3 or not nll(w) < nll(start):
        return 1.0, 0.0
    return a, b


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration: logits * scale, plus shift on the last class (temperature:
    scale 1/T, shift 0)."""

    method: str
    scale: float = 1.0
    shift: float = 0.0
    cross_fitted_nll: dict[str, float] = field(default_factory=dict)

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        out = logits.double() * self.scale
        out[:, -1] += self.shift
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "temperature": self.temperature,
            "scale": self.scale,
            "shift": self.shift,
            "cross_fitted_nll": self.cross_fitted_nll,
        }


def fit_calibration(
    method: str, logits: torch.Tensor, labels: torch.Tensor, warn: bool = True
) -> Calibration:
    """Fit `method` (none, temperature, platt) on these logits and labels (`warn`: log when a
    temperature is not identifiable; off for the folds of a comparison)."""
    if method == "none":
        return Calibration("none")
    if method == "temperature":
        return Calibration("temperature", scale=1.0 / fit_temperature(logits, labels, warn))
    if method == "platt":
        if logits.shape[1] != 2:
            raise ValueError("platt calibration is for two classes; use temperature")
        a, b = fit_platt(logits, labels)
        return Calibration("platt", scale=a, shift=b)
    raise ValueError(f"unknown calibration {method!r}; expected auto, none, temperature, platt")


def _folds(labels: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """k stratified folds of the indices (each class dealt round-robin in a seeded order)."""
    g = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        fold_of[idx] = torch.arange(len(idx)) % k
    return [(fold_of == i).nonzero().flatten() for i in range(k)]


def select_calibration(
    method: str, logits: torch.Tensor, labels: torch.Tensor, folds: int = 5, seed: int = 0
) -> Calibration:
    """`method` fitted on all of val; for `auto`, first the NLL of none and temperature
    cross-fitted over stratified folds of val, and the lowest wins (ties: the simpler)."""
    logits, labels = logits.detach().double(), labels.detach().long()
    if method != "auto":
        return fit_calibration(method, logits, labels)
    # not platt: its bias re-learns val's class prevalence, undoing the prior the network was
    # trained with (balanced_sampler's 50 %), which measured worse under a val->test shift
    # (docs/decisions/calibration-shift.md); it stays a choice of its own
    candidates = ["none", "temperature"]
    k = min(folds, int(torch.bincount(labels).min()))
    if k < 2:
        logger.warning("calibration: too few val images of a class to compare; temperature")
        return fit_calibration("temperature", logits, labels)
    parts = _folds(labels, k, seed)
    scores: dict[str, float] = {}
    for name in candidates:
        total = 0.0
        for i, held in enumerate(parts):
            fit_idx = torch.cat([p for j, p in enumerate(parts) if j != i])
            cal = fit_calibration(name, logits[fit_idx], labels[fit_idx], warn=False)
            total += float(F.cross_entropy(cal.apply(logits[held]), labels[held], reduction="sum"))
        scores[name] = total / len(labels)
    best = min(candidates, key=lambda n: (round(scores[n], 6), candidates.index(n)))
    chosen = fit_calibration(best, logits, labels)
    logger.info(
        "calibration: %s kept (cross-fitted val NLL %s)",
        best,
        ", ".join(f"{n} {v:.4f}" for n, v in scores.items()),
    )
    return Calibration(chosen.method, chosen.scale, chosen.shift, scores)


def fold_calibration(net: nn.Module, calibration: Calibration) -> None:
    """Fold a fitted calibration into the network's final linear layers."""
    if calibration.method != "none":
        fold_affine(net, calibration.scale, calibration.shift)
