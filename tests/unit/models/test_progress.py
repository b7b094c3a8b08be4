"""The per-epoch progress line of a real (tiny) Lightning fit, and its progress callback."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medflow.config import TrainParams
from medflow.models.progress import clock
from medflow.models.training import run_train
from tests.helpers.arrays_factory import write_arrays

ROOT = Path(__file__).resolve().parents[3]
TINY = {
    "max_epochs": 2,
    "width": 4,
    "batch_size": 16,
    "early_stopping_patience": 10,
    "time_budget_minutes": None,
}

LINE = re.compile(
    r"epoch (?P<epoch>\d+)/2: train loss \d+\.\d{4}, val loss \d+\.\d{4}, val AUROC [01]\.\d{4};"
    r" \d+:\d\d elapsed, about (?P<left>\d+:\d\d) left(?P<note> \(early stopping may end sooner\))?"
)


def test_one_line_per_epoch_with_losses_auroc_and_time_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    arrays = write_arrays(tmp_path / "arrays", n=32)
    params = TrainParams(**TINY)
    reported: list[tuple[int, int]] = []
    with caplog.at_level(logging.INFO, logger="medflow"):
        run_train(
            params,
            ["c0", "c1"],
            arrays,
            tmp_path / "models",
            progress=lambda done, total: reported.append((done, total)),
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "medflow.models.progress"]
    assert len(lines) == 2, lines
    found = [LINE.fullmatch(line) for line in lines]
    assert all(found), lines
    assert [m["epoch"] for m in found] == ["1", "2"]  # type: ignore[index]
    # said once, on the first line; nothing is left after the last epoch
    assert found[0]["note"] and not found[1]["note"]  # type: ignore[index]
    assert found[1]["left"] == "0:00"  # type: ignore[index]
    assert reported == [(1, 2), (2, 2)]


def test_the_train_command_prints_the_lines(tmp_path: Path) -> None:
    """What `make run` shows: `medflow train` (as dvc.yaml runs it) with its own logging."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(TINY)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    arrays = write_arrays(tmp_path / "arrays", n=32)
    medflow = str(Path(sys.executable).parent / "medflow")
    proc = subprocess.run(
        [medflow, "train", str(arrays), str(tmp_path / "models"), "-p", "params.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "250"},  # rich wraps at 80 columns without a terminal
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert re.findall(r"epoch (\d)/2: train loss", out) == ["1", "2"], out[-3000:]
    assert out.count("early stopping may end sooner") == 1


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (59.6, "1:00"), (125, "2:05"), (3725, "1:02:05")]
)
def test_clock(seconds: float, text: str) -> None:
    assert clock(seconds) == text
