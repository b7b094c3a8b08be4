"""Several networks and test-time augmentation served as one network.

`Composite(members, views)` returns the mean logits of every member over every view of the
batch. A mean of logits is linear in each member's final layer, so a calibration folded into
every member's last nn.Linear calibrates the whole (models.calibration). Evaluation and the
Bento load the same Composite from model.json (`members`, `tta`): they score the same thing.

Views are the test-time counterparts of the training augmentations that `augment` allows:
`identity` always; `hflip` only with `augment.horizontal_flip` (left and right can carry
meaning); `shift+` / `shift-` (half of `augment.max_shift` pixels along both axes, zero fill)
when training shifted images by at least 2 pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medflow.config import AugmentParams

VIEWS = ("identity", "hflip", "shift+", "shift-")


def tta_views(augment: AugmentParams) -> list[str]:
    """The views test-time augmentation may use under these training augmentations."""
    views = ["identity"]
    if augment.horizontal_flip:
        views.append("hflip")
    if augment.max_shift >= 2:
        views += ["shift+", "shift-"]
    return views


def _shift(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """x moved by `pixels` down and right (negative: up and left), zero filled."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    p = abs(pixels)
    if p >= min(h, w):
        return out
    if pixels > 0:
        out[..., p:, p:] = x[..., : h - p, : w - p]
    else:
        out[..., : h - p, : w - p] = x[..., p:, p:]
    return out


def view(x: torch.Tensor, name: str, shift: int) -> torch.Tensor:
    """The batch x seen through view `name` (one of VIEWS)."""
    if name == "identity":
        return x
    if name == "hflip":
        return torch.flip(x, dims=(-1,))
    if name in ("shift+", "shift-"):
        return _shift(x, shift if name == "shift+" else -shift)
    raise ValueError(f"unknown test-time view {name!r}; expected one of {', '.join(VIEWS)}")


class Composite(nn.Module):
    """The mean logits of `members` over `views` of the input (one forward per pair)."""

    def __init__(self, members: Sequence[nn.Module], views: Sequence[str], shift: int = 0):
        super().__init__()
        if not members:
            raise ValueError("a composite needs at least one member network")
        for name in views:
            if name not in VIEWS:
                raise ValueError(f"unknown test-time view {name!r}; expected one of {VIEWS}")
        self.members = nn.ModuleList(members)
        self.views = list(views) or ["identity"]
        self.shift = max(int(shift), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for name in self.views:
            seen = view(x, name, self.shift)
            for member in self.members:
                logits = member(seen)
                total = logits if total is None else total + logits
        assert total is not None
        return total / (len(self.views) * len(self.members))


def assemble(members: Sequence[nn.Module], views: Sequence[str], shift: int = 0) -> nn.Module:
    """One network of `members` and `views`: the plain network when there is one member and no
    view but the identity (the model.pt of a single network keeps its keys)."""
    if len(members) == 1 and list(views) in ([], ["identity"]):
        return members[0]
    return Composite(members, views, shift)


def members_of(net: nn.Module) -> list[nn.Module]:
    """The plain networks inside `net` (itself when it is one)."""
    return list(net.members) if isinstance(net, Composite) else [net]
