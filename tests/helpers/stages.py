"""The dvc stages: read from dvc.yaml, and found in a `dvc repro` log."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def dvc_stages(root: Path = ROOT) -> list[str]:
    """The stage names of root/dvc.yaml, in the order the file lists them."""
    return list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])


def always_changed(root: Path = ROOT) -> set[str]:
    """The stages dvc.yaml marks always_changed (the pull: it runs on every `dvc repro`)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name for name, stage in stages.items() if stage.get("always_changed")}


def ran_stages(output: str) -> set[str]:
    """The stages a `dvc repro` output says it ran, the always_changed ones left out (they
    run every time; a test of the pull reads its log instead)."""
    return set(re.findall(r"Running stage '([^']+)'", output)) - always_changed()


def stale_stages(repo: Path) -> dict[str, list]:
    """`dvc status` of repo's stages, without those whose only change is "always changed"
    ({}: DVC has nothing to re-run but the pull)."""
    out = subprocess.run(
        ["dvc", "status", "--json"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    return {k: v for k, v in json.loads(out or "{}").items() if v != ["always changed"]}


def stages_after(stage: str, root: Path = ROOT) -> list[str]:
    """The stages dvc.yaml lists after stage: its downstream in this linear pipeline."""
    stages = dvc_stages(root)
    return stages[stages.index(stage) + 1 :]
