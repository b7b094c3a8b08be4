"""The per-epoch progress line of a real (tiny) Lightning fit, and its progress callback."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from medflow.config import TrainParams
from medflow.models.progress import clock
from medflow.models.training import run_train
from tests.helpers.arrays_factory import write_arrays

LINE = re.compile(
    r"epoch (?P<epoch>\d+)/2: train loss \d+\.\d{4}, val loss \d+\.\d{4}, val AUROC [01]\.\d{4};"
    r" \d+:\d\d elapsed, about (?P<left>\d+:\d\d) left(?P<note> \(early stopping may end sooner\))?"
)


def test_one_line_per_epoch_with_losses_auroc_and_time_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    arrays = write_arrays(tmp_path / "arrays", n=32)
    params = TrainParams(max_epochs=2, width=4, batch_size=16, early_stopping_patience=10)
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


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (59.6, "1:00"), (125, "2:05"), (3725, "1:02:05")]
)
def test_clock(seconds: float, text: str) -> None:
    assert clock(seconds) == text
