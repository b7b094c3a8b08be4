"""Pretrained weights from a local file (train.pretrained_weights): found, hashed and loaded
into the network before training. Nothing is ever downloaded."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medflow.config import ConfigError
from medflow.models.calibration import final_linear

log = logging.getLogger(__name__)

# prefixes a whole state_dict may carry: medflow's LightningModule (`net.`), DDP (`module.`)
_PREFIXES = ("net.", "module.")


@dataclass(frozen=True)
class WeightsFile:
    """train.pretrained_weights as found: its path as written, where it is, its sha256."""

    name: str
    path: Path
    sha256: str


def find_weights(name: str | None, root: Path) -> WeightsFile | None:
    """The weights file `name` (relative: from `root`, the project root) and its sha256;
    None when unset.

    Raises:
        ConfigError: the file is missing or unreadable (the message names the path).
    """
    if name is None:
        return None
    path = Path(name).expanduser()
    path = path if path.is_absolute() else Path(root) / path
    if not path.is_file():
        raise ConfigError(
            f"train.pretrained_weights: no file at {path}; give an existing weights file"
            " (relative to the project root) or null"
        )
    try:
        with path.open("rb") as fh:
            sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise ConfigError(f"train.pretrained_weights: cannot read {path}: {exc}") from exc
    return WeightsFile(name, path, sha256)


def read_state_dict(weights: WeightsFile) -> dict[str, torch.Tensor]:
    """The tensors of the file: a state_dict, or a checkpoint holding one under
    `state_dict` (its `net.` or `module.` prefix removed). Loaded with weights_only=True.

    Raises:
        ConfigError: the file is not a PyTorch weights file or holds no tensors.
    """
    try:
        obj: Any = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike
        raise ConfigError(
            f"train.pretrained_weights: {weights.path} is not a PyTorch weights file"
            f" (torch.save of a state_dict): {type(exc).__name__}"
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    state = (
        {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if isinstance(obj, dict)
        else {}
    )
    if not state:
        raise ConfigError(
            f"train.pretrained_weights: {weights.path} holds no tensors; save a state_dict"
            " (torch.save(net.state_dict(), path))"
        )
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def load_pretrained(net: nn.Module, weights: WeightsFile, architecture: str) -> dict[str, Any]:
    """Copy the file's tensors into `net` where name and shape match; report the rest.

    A classifier head of another shape (another number of classes) is expected: it stays
    randomly initialised, logged at INFO. Other skipped tensors are logged as a WARNING.

    Returns:
        the provenance record for model.json: path as written, sha256, the count of tensors
        loaded, and the names skipped (shape differs), missing (in the network, not the file)
        and unexpected (in the file, not the network).

    Raises:
        ConfigError: no tensor of the file fits the network outside its classifier head
            (weights of another architecture).
    """
    state = read_state_dict(weights)
    own = net.state_dict()
    head_name = next(n for n, m in net.named_modules() if m is final_linear(net))
    head = {f"{head_name}.weight", f"{head_name}.bias"}
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not set(fits) - head:
        raise ConfigError(
            f"train.pretrained_weights: none of the {len(state)} tensors of {weights.path}"
            f" fits a {architecture} network outside its classifier head (names or shapes"
            " differ); give weights of the same train.architecture"
        )
    skipped = sorted(k for k in state if k in own and k not in fits)
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    net.load_state_dict(fits, strict=False)
    log.info(
        "pretrained weights %s (sha256 %s): %d of the network's %d tensors loaded",
        weights.name,
        weights.sha256[:12],
        len(fits),
        len(own),
    )
    if head & set(skipped):
        log.info("the classifier head (%s) differs in shape: it starts untrained", head_name)
    for what, keys in (
        ("skipped, another shape", [k for k in skipped if k not in head]),
        ("missing from the file, left as initialised", missing),
        ("in the file but not in the network, ignored", unexpected),
    ):
        if keys:
            log.warning("pretrained weights: %d tensors %s: %s", len(keys), what, _listing(keys))
    return {
        "path": weights.name,
        "sha256": weights.sha256,
        "loaded": len(fits),
        "skipped_shape": skipped,
        "missing": missing,
        "unexpected": unexpected,
    }


def _listing(keys: list[str], most: int = 10) -> str:
    shown = ", ".join(keys[:most])
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")
