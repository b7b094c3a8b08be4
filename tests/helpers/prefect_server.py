"""A real `prefect server start` subprocess on a free localhost port, for UI and database tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from medflow.registry.infra_validation import free_port, stop_process_group

PREFECT = str(Path(sys.executable).parent / "prefect")


def client_env(api_url: str, home: Path) -> dict[str, str]:
    """Environment for a process that runs flows against the server at `api_url`."""
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(home),
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(home / "storage"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@contextmanager
def running_server(
    home: Path, extra_env: dict[str, str] | None = None, timeout: float = 120
) -> Iterator[str]:
    """Start `prefect server start` with its own PREFECT_HOME; yield its base URL.

    The UI fetches its API address from the server (PREFECT_UI_API_URL, else
    PREFECT_API_URL, else port 4200), so it is set to this server's port explicitly.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_UI_API_URL=f"{base}/api",
        PREFECT_UI_URL=base,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        **(extra_env or {}),
    )
    log_path = home / "server.log"
    with log_path.open("wb") as log:
        # own session: stopping the server also stops anything it spawned, and only that
        proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited {proc.returncode}:\n{log_path.read_text()[-4000:]}"
                )
            try:
                if httpx.get(f"{base}/api/health", timeout=2).json() is True:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"prefect server not healthy after {timeout:.0f} s:\n"
                    f"{log_path.read_text()[-4000:]}"
                )
            time.sleep(0.5)
        yield base
    finally:
        stop_process_group(proc, timeout=20)
