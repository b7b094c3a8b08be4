"""Session-wide test environment: every tool writes inside a per-session temp folder."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_tool_homes(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep BentoML's store and analytics off the user's home during tests."""
    base = tmp_path_factory.mktemp("homes")
    os.environ["BENTOML_HOME"] = str(base / "bentoml")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MEDFLOW_DEID_KEY", "medflow-test-key-not-secret")
