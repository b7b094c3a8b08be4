"""Per-epoch training curves as DVC plots: dvclive's Lightning logger, one row per epoch."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dvclive import Live
from dvclive.env import DVC_EXP_BASELINE_REV
from dvclive.lightning import DVCLiveLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only


class _Live(Live):
    """dvclive's Live that looks for a DVC repository only under `dvc exp run`.

    Elsewhere dvclive 3.49 opens the repository of the working directory, which runs `dvc init`
    in a git repository without DVC and fails in one without a commit ("Empty git repo"): a
    curve is no reason for either. Under `dvc exp run` (which needs a commit) it git-adds the
    new curve files, so that the experiment holds them.
    """

    def _init_dvc(self) -> None:
        if os.environ.get(DVC_EXP_BASELINE_REV):
            super()._init_dvc()
        else:
            self._dvc_file = "dvc.yaml"  # unused: dvcyaml=False


class EpochCurves(DVCLiveLogger):
    """dvclive's logger with the epoch as the x of every curve (its `step` column).

    The step is the epochs completed (1 = after the first epoch): dvclive treats a step of 0
    as "none given" and would count on from its own. Lightning's `epoch` entry is not logged
    as a curve of its own. Writes `metrics.json` (the last values) and `plots/metrics/*.tsv`
    in `live_dir`; never a dvc.yaml and never an experiment of its own (`dvc exp run` makes
    those). `resume`: add to the curves already there instead of starting afresh. `offset`:
    epochs before this fit's first (an ensemble's earlier members), so that steps count on.
    """

    def __init__(self, live_dir: Path, resume: bool = False, offset: int = 0) -> None:
        super().__init__(dir=str(live_dir), resume=resume, dvcyaml=False, save_dvc_exp=False)
        self.offset = offset

    @property
    @rank_zero_experiment
    def experiment(self) -> Live:
        if self._experiment is None:
            self._experiment = _Live(**self._kwargs)
        return self._experiment

    @rank_zero_only
    def log_metrics(
        self,
        metrics: Mapping[str, int | float | str],
        step: int | None = None,
        sync: bool | None = False,
    ) -> None:
        metrics = dict(metrics)
        if "epoch" in metrics:
            step = int(metrics.pop("epoch")) + 1 + self.offset
        super().log_metrics(metrics, step, sync)
