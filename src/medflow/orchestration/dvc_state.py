"""DVC's view of the pipeline, in-process: which stages are stale; record one that ran.

Not named dvc.py: the served deployments load flows by file path, which puts this folder on
sys.path, where a dvc.py would shadow the dvc package.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import chdir, contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _target(root: Path, stage: str) -> str:
    return f"{Path(root).resolve() / 'dvc.yaml'}:{stage}"


@contextmanager
def _in_repo(root: Path) -> Iterator[Any]:
    """DVC resolves targets and checks outputs against the process's cwd, not the repo root:
    work from the root (stages run one at a time, and take absolute paths)."""
    from dvc.repo import Repo

    with chdir(Path(root).resolve()), Repo(".") as repo:
        yield repo


ALWAYS = ["always changed"]  # `dvc status` of an always_changed stage with nothing else new


def dvc_stale(root: Path, stage: str | None = None) -> set[str] | None:
    """Stages `dvc status` reports changed (only `stage`, when given); None: not a DVC repo.

    A stage whose only change is DVC's "always changed" (the pull) is not stale: whether it
    runs anyway is the stage's own rule (medflow.stages.Stage.runs_always)."""
    from dvc.exceptions import NotDvcRepoError

    try:
        with _in_repo(root) as repo:
            status = repo.status(targets=[_target(root, stage)] if stage else None)
    except NotDvcRepoError:
        return None
    # keys are stage names, or "dvc.yaml:name" for stages of other dvc.yaml files
    return {key.rsplit(":", 1)[-1] for key, changes in status.items() if changes != ALWAYS}


def dvc_commit(root: Path, stage: str) -> None:
    """Record the stage's deps and outs in dvc.lock, as `dvc repro` would after running it."""
    from dvc.exceptions import NotDvcRepoError

    try:
        with _in_repo(root) as repo:
            repo.commit(_target(root, stage), force=True)
    except NotDvcRepoError:
        log.info("%s is not a DVC repository: %s not recorded", root, stage)
