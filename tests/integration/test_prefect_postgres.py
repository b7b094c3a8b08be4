"""`prefect server start` on PostgreSQL (PREFECT_API_DATABASE_CONNECTION_URL) records flow runs.

A throw-away cluster (Debian's postgresql: initdb, pg_ctl) in a temp dir on a free port; as
root the cluster runs as the `postgres` system user, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from medflow.registry.infra_validation import free_port
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


def _pg_bin() -> Path | None:
    """Debian keeps the server binaries off PATH, in /usr/lib/postgresql/<major>/bin."""
    if found := shutil.which("initdb"):
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    return Path(dirs[-1]) if dirs and (Path(dirs[-1]) / "initdb").exists() else None


def _as_cluster_user() -> list[str]:
    """Prefix that runs a command as a non-root user (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run the cluster as")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without `runuser` to drop to the `postgres` user")
    return [runuser, "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh cluster with database `prefect`, user `prefect` (trust auth, localhost only)."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; `make system-deps`")
    prefix = _as_cluster_user()
    # in /tmp, not pytest's tmp dir or $TMPDIR: those may sit under a private home the
    # cluster user (postgres, when running as root) cannot enter, and the socket path is short
    base = Path(
        tempfile.mkdtemp(prefix="medflow-pg-", dir="/tmp" if Path("/tmp").is_dir() else None)
    )
    if prefix:
        shutil.chown(base, user="postgres")
    data, port = base / "data", free_port()

    def run(*cmd: str) -> None:
        proc = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stderr[-3000:]}"

    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl, log, pg_port = str(bindir / "pg_ctl"), str(base / "pg.log"), str(port)
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "prefect", "-A", "trust", "--no-sync")
        run(pg_ctl, "-D", str(data), "-o", opts, "-l", log, "-w", "start")
        try:
            run(
                str(bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                pg_port,
                "-U",
                "prefect",
                "prefect",
            )
            yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
        finally:
            run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _psql(url: str, sql: str) -> str:
    host_port, db = url.rsplit("@", 1)[1].split("/")
    host, port = host_port.split(":")
    psql = shutil.which("psql") or str(_pg_bin() / "psql")
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
