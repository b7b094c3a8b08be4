"""`prefect server start` on PostgreSQL (PREFECT_API_DATABASE_CONNECTION_URL) records flow runs.

A throw-away cluster (Debian's postgresql: initdb, pg_ctl) in a temp dir on a free port; as
root the cluster runs as the `postgres` system user, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.helpers import postgres
from tests.helpers.prefect_server import client_env, running_server

pytestmark = pytest.mark.timeout(300)

FLOW = """
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

@task
def square(x: int) -> int:
    create_markdown_artifact(key="pg-check", markdown=f"# {x} squared")
    return x * x

@flow(name="pg-check")
def check(x: int = 7) -> int:
    return square(x)

if __name__ == "__main__":
    state = check(return_state=True)
    print(state.state_details.flow_run_id, state.result())
"""


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh cluster with database `prefect`, user `prefect` (trust auth, localhost only)."""
    reason = postgres.missing()
    if reason:
        pytest.skip(reason)
    with postgres.cluster("prefect", "prefect") as url:
        yield url.replace("postgresql://", "postgresql+asyncpg://", 1)


def _psql(url: str, sql: str) -> str:
    host_port, db = url.rsplit("@", 1)[1].split("/")
    host, port = host_port.split(":")
    psql = shutil.which("psql") or str(postgres.pg_bin() / "psql")
    out = subprocess.run(
        [psql, "-h", host, "-p", port, "-U", "prefect", "-d", db, "-tAc", sql],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def test_server_on_postgres_records_the_flow_run(postgres_url, tmp_path):
    home = tmp_path / "server_home"
    env = {"PREFECT_API_DATABASE_CONNECTION_URL": postgres_url}
    with running_server(home, extra_env=env) as base:
        script = tmp_path / "pg_check.py"
        script.write_text(FLOW)
        proc = subprocess.run(
            [sys.executable, str(script)],
            env=client_env(f"{base}/api", tmp_path / "client_home"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_id, result = proc.stdout.split()[-2:]
        assert result == "49"

    # the server is stopped: what it recorded is in Postgres, and no SQLite file was made
    assert not (home / "prefect.db").exists()
    row = _psql(postgres_url, f"select state_type from flow_run where id = '{run_id}'")
    assert row == "COMPLETED"
    assert _psql(postgres_url, "select key from artifact") == "pg-check"
