"""Temperature scaling (Guo et al., 2017): one scalar T > 0 fitted on the validation split.

Dividing the logits by T keeps the ranking (AUROC, argmax) and makes over-confident softmax
probabilities match observed frequencies. T is folded into the final linear layer, so
evaluation and the Bento apply it unawares (why: docs/decisions/calibration.md).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# log T is searched in [-MAX_LOG_T, MAX_LOG_T]: T between 1/20 and 20
MAX_LOG_T = math.log(20.0)


@torch.inference_mode()
def logits_of(net: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The network's logits for x, in eval mode, computed in batches."""
    net = net.eval()
    return torch.cat([net(x[i : i + batch_size].float()) for i in range(0, len(x), batch_size)])


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
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
    """Make net(x) return logits / temperature, by scaling its final linear layer in place."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    layer = final_linear(net)
    layer.weight.div_(temperature)
    if layer.bias is not None:
        layer.bias.div_(temperature)
