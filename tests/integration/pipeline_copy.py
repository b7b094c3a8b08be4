"""A throw-away copy of the project with tiny params, for real `dvc repro` and flow runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

# Small enough for CI's two cores, big enough that a real model learns something.
TINY_PARAMS = {
    "synth": {"n_patients": 60, "images_per_patient": 2},
    "preprocess": {"image_size": 32},
    "train": {"max_epochs": 8, "width": 8, "batch_size": 16},
    "gate": {
        "min_auroc": 0.5,
        "min_auroc_ci_low": 0.0,
        "min_sensitivity": 0.0,
        "min_specificity": 0.0,
        "max_ece": 1.0,
        "min_subgroup_auroc": 0.0,
    },
    # fewer resamples: the intervals only need to exist here
    "evaluate": {"n_bootstrap": 200},
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--stdout--\n{proc.stdout[-4000:]}"
            f"\n--stderr--\n{proc.stderr[-4000:]}"
        )
    return proc


def set_params(repo: Path, extra: dict) -> None:
    path = repo / "params.yaml"
    path.write_text(
        yaml.safe_dump(_merge(yaml.safe_load(path.read_text()), extra), sort_keys=False)
    )


def make_copy(dest: Path, params: dict | None = None) -> Path:
    """Copy what git would ship (tracked and new, not ignored) into dest as a fresh git repo."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    # pipeline outputs (reports/ is partly in git) stay behind: a copy starts with no champion
    for rel in (f for f in files if f and not f.startswith("reports/")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    set_params(dest, _merge(TINY_PARAMS, params or {}))
    run(["git", "init", "-q"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], dest)
    return dest


def clone(src: Path, dest: Path) -> Path:
    """A private copy of a reproduced copy (workspace, .git, .dvc and its cache): a test may
    change it freely. DVC re-hashes the files at the new path and finds them unchanged."""
    shutil.copytree(src, dest, symlinks=True)
    return dest
