"""A throw-away PostgreSQL cluster (Debian's initdb, pg_ctl) in /tmp on a free port, for tests
of code that talks to PostgreSQL for real. As root it runs as the `postgres` system user,
because PostgreSQL refuses to run as root."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medflow.registry.infra_validation import free_port


def pg_bin() -> Path | None:
    """Debian keeps the server binaries off PATH, in /usr/lib/postgresql/<major>/bin."""
    if found := shutil.which("initdb"):
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    return Path(dirs[-1]) if dirs and (Path(dirs[-1]) / "initdb").exists() else None


def missing() -> str | None:
    """Why no cluster can be started here (a skip reason), or None."""
    if pg_bin() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found; `make system-deps`"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the cluster as"
        if shutil.which("runuser") is None:
            return "running as root without `runuser` to drop to the `postgres` user"
    return None


@contextlib.contextmanager
def cluster(database: str, user: str) -> Iterator[str]:
    """A fresh cluster holding `database`, owned by `user` (trust auth, 127.0.0.1 only);
    yields its URL postgresql://user@127.0.0.1:<port>/database. Check missing() first."""
    bindir = pg_bin()
    assert bindir is not None, missing()
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    # in /tmp: the cluster user must be able to enter it, and the socket path must be short
    base = Path(tempfile.mkdtemp(prefix="medflow-pg-", dir="/tmp"))
    if prefix:
        shutil.chown(base, user="postgres")
    data, port = base / "data", free_port()

    def run(*cmd: str) -> None:
        proc = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stderr[-3000:]}"

    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = str(bindir / "pg_ctl")
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", user, "-A", "trust", "--no-sync")
        run(pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "pg.log"), "-w", "start")
        try:
            createdb = str(bindir / "createdb")
            run(createdb, "-h", "127.0.0.1", "-p", str(port), "-U", user, database)
            yield f"postgresql://{user}@127.0.0.1:{port}/{database}"
        finally:
            run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)
