"""Shared fixtures of the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.pipeline_copy import (
    BackgroundRepro,
    make_copy,
    run,
    start_in_background,
)


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


@pytest.fixture(scope="session", autouse=True)
def _background_repros(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, _isolated_tool_homes
):
    """Start the BackgroundRepro copies of the collected test modules (their own params or
    data) in one background thread as the integration tests begin; wait for it at the end."""
    modules = dict.fromkeys(getattr(item, "module", None) for item in request.session.items)
    found = (v for m in modules if m is not None for v in vars(m).values())
    jobs = list(dict.fromkeys(v for v in found if isinstance(v, BackgroundRepro)))
    lane = start_in_background(jobs, tmp_path_factory.mktemp("background")) if jobs else None
    yield
    if lane is not None:
        lane.join(timeout=1800)


@pytest.fixture
def orthanc(tmp_path: Path):
    """A real Orthanc PACS on loopback with its own storage, ports and credentials (stopped
    after the test; tests may stop() and start() it again)."""
    from tests.helpers.orthanc import SKIP_REASON, Orthanc, orthanc_binary

    if orthanc_binary() is None:
        pytest.skip(SKIP_REASON)
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        yield server
    finally:
        server.stop()
