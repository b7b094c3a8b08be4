"""A throw-away copy of the project with tiny params, for real `dvc repro` and flow runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# Small enough for CI's two cores, big enough that the model must learn to pass a real gate:
# 25 epochs reach test AUROC 0.98 (interval low 0.91), sensitivity 1.0, specificity 0.71 and
# ECE 0.14 on this synthetic data (16 epochs only 0.90: too close to the floor).
TINY_PARAMS = {
    "synth": {"n_patients": 60, "images_per_patient": 2},
    "preprocess": {"image_size": 32},
    # no time budget: exactly 25 epochs of one network, however fast the machine; test-time
    # views on, so the pipeline tests carry a models.ensemble.Composite through evaluate,
    # package and the Bento (the default, off, serves the plain network as test_serving does)
    "train": {
        "max_epochs": 25,
        "width": 8,
        "batch_size": 16,
        "time_budget_minutes": None,
        "tta": True,
    },
    "gate": {
        "min_auroc": 0.9,
        "min_auroc_ci_low": 0.7,
        "min_sensitivity": 0.7,
        "min_specificity": 0.5,
        "max_ece": 0.25,
        # 28 test images: every subgroup is below evaluate.min_subgroup_n, none is gated
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


def run(
    cmd: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run cmd in cwd with this venv first on PATH and `env` added to the environment."""
    env = {**os.environ, **(env or {})}
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


class BackgroundRepro:
    """A copy with its own params or data whose `dvc repro` may run in the background.

    The tests that need such a copy (test_multiclass.py, test_gate_shuffled_labels.py) declare
    one at module level; conftest.py starts the collected ones, one after another, in a thread
    when the integration tests begin, so that they run on the second core while the tests
    before them run on the first (both are mostly one busy Python process). A test's fixture
    then takes the result, waiting if it is not there yet; a job nobody started runs then.
    Nothing is faked: `prepare` makes the copy and `cmd` is the real command in it.
    """

    def __init__(
        self,
        name: str,
        prepare: Callable[[Path], None],
        cmd: list[str],
        env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.prepare, self.cmd, self.env = name, prepare, cmd, env or {}
        self._lock = threading.Lock()
        self._claimed = False
        self._done = threading.Event()
        self._result: tuple[Path, subprocess.CompletedProcess[str]] | None = None
        self._error: BaseException | None = None

    def _claim(self) -> bool:
        with self._lock:
            claimed, self._claimed = self._claimed, True
            return not claimed

    def _run(self, base: Path) -> None:
        try:
            dest = base / self.name
            dest.mkdir(parents=True)
            self.prepare(dest)
            self._result = dest, run(self.cmd, dest, check=False, env=self.env)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test that takes it
            self._error = exc
        finally:
            self._done.set()

    def result(
        self, tmp_path_factory: pytest.TempPathFactory
    ) -> tuple[Path, subprocess.CompletedProcess[str]]:
        """The copy and the command's outcome (not checked: a test may expect a failure);
        made and run here and now if nobody started it."""
        if self._claim():
            self._run(tmp_path_factory.mktemp(self.name))
        if not self._done.wait(timeout=1800):
            raise AssertionError(f"background repro {self.name} did not finish in 30 min")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


# ingest of any source but the synthetic demo wants a real pseudonymisation key
TEST_DEID_KEY = "integration-test-key-" * 3


def package_in_background(name: str, prepare: Callable[[Path], None]) -> BackgroundRepro:
    """`dvc repro package` in the copy `prepare` makes, with TEST_DEID_KEY."""
    return BackgroundRepro(
        name, prepare, ["dvc", "repro", "package"], env={"MEDFLOW_DEID_KEY": TEST_DEID_KEY}
    )


def start_in_background(jobs: Iterable[BackgroundRepro], base: Path) -> threading.Thread:
    """Run the jobs one after another in a daemon thread (one background process at a time)."""

    def lane() -> None:
        for job in jobs:
            if job._claim():
                job._run(base)

    thread = threading.Thread(target=lane, name="background-repros", daemon=True)
    thread.start()
    return thread
