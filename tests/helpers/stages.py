"""The dvc stages: read from dvc.yaml, and found in a `dvc repro` log."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def dvc_stages(root: Path = ROOT) -> list[str]:
    """The stage names of root/dvc.yaml, in the order the file lists them."""
    return list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])


def ran_stages(output: str) -> set[str]:
    """The stages a `dvc repro` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def stages_after(stage: str, root: Path = ROOT) -> list[str]:
    """The stages dvc.yaml lists after stage: its downstream in this linear pipeline."""
    stages = dvc_stages(root)
    return stages[stages.index(stage) + 1 :]
