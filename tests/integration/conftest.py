"""Shared fixtures of the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.pipeline_copy import make_copy, run


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory):
    """One ephemeral Prefect server (its own SQLite database) for every flow test."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect_results")
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: results}):
        with prefect_test_harness(server_startup_timeout=180):
            yield


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy with the tiny params after one full `dvc repro` (a minute or two), and that
    repro's output (stdout, then stderr: the stages' logs), shared by every test that needs a
    reproduced pipeline. Tests must not change it: clone it first (pipeline_copy.clone)."""
    dest = make_copy(tmp_path_factory.mktemp("reproduced"))
    proc = run(["dvc", "repro"], dest)
    return dest, proc.stdout + proc.stderr
