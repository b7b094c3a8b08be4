"""The model artifact: weights plus everything needed to use them, in one folder.

`model.pt` (the state_dict, loaded with weights_only=True) and `model.json` (architecture,
class names, preprocessing params, threshold, provenance). Written by train; read by evaluate,
package and the Bento service.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from medflow.config import PreprocessParams
from medflow.io import write_bytes_atomic, write_json_atomic
from medflow.models.ensemble import assemble
from medflow.models.net import build_network, build_unet

WEIGHTS_FILE = "model.pt"
CARD_FILE = "model.json"


@dataclass(frozen=True)
class ModelSpec:
    """What a served or evaluated model needs besides its weights."""

    architecture: str
    in_channels: int
    num_classes: int
    width: int
    dropout: float
    class_names: list[str]
    preprocess: dict[str, Any]
    threshold: float = 0.5
    provenance: dict[str, Any] = field(default_factory=dict)
    members: int = 1
    """networks of this architecture whose mean logits are the model's (an ensemble)"""
    tta: list[str] = field(default_factory=list)
    """test-time views averaged over (models.ensemble.VIEWS); empty: the image alone"""
    tta_shift: int = 0
    """pixels the shift views move the image by"""
    task: str = "classification"
    """classification: logits (N, num_classes); segmentation: a U-Net's per-segment logits
    (N, num_classes, S, S), num_classes being the segments (data.class_names[1:])"""
    unet_channels: list[int] = field(default_factory=list)
    """segmentation: the U-Net's channels per level (train.unet_channels)"""

    @property
    def preprocess_params(self) -> PreprocessParams:
        """The preprocessing the model was trained with, as validated params."""
        return PreprocessParams.model_validate(self.preprocess)

    def build(self) -> torch.nn.Module:
        """The untrained network; architecture is train.architecture ('smallcnn', 'resnet',
        'monai_resnet18'...; models written before the choice existed say 'SmallCNN'). With
        several members or test-time views, their models.ensemble.Composite. Segmentation:
        the MONAI U-Net (medflow.models.net.build_unet)."""
        if self.task == "segmentation":
            return build_unet(self.in_channels, self.num_classes, self.unet_channels, self.dropout)
        members = [
            build_network(
                self.architecture,
                self.in_channels,
                self.num_classes,
                self.width,
                self.dropout,
                image_size=self.preprocess_params.image_size,
            )
            for _ in range(self.members)
        ]
        return assemble(members, self.tta, self.tta_shift)


def save_model(folder: Path, net: torch.nn.Module, spec: ModelSpec) -> None:
    """Write weights and spec atomically into folder."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buf)
    write_bytes_atomic(folder / WEIGHTS_FILE, buf.getvalue())
    write_json_atomic(folder / CARD_FILE, asdict(spec))


def load_spec(folder: Path) -> ModelSpec:
    """The model's spec (model.json) alone; raises FileNotFoundError naming the path."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no model spec at {path}: run the train stage first")
    return ModelSpec(**json.loads(path.read_text()))


def load_model(folder: Path) -> tuple[torch.nn.Module, ModelSpec]:
    """Rebuild the network from folder, in eval mode on the CPU."""
    spec = load_spec(folder)
    net = spec.build()
    state = torch.load(Path(folder) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval(), spec
