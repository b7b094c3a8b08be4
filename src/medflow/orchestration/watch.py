"""The data watcher: hash the data source, emit `medflow.data.changed` when the hash moves.

The training deployment's trigger turns the event into a run. The last hash, with each file's
size, mtime and digest, is kept in .medflow/watch_state.json (unchanged files are not re-read).

    python -m medflow.orchestration.watch --root .   # one look (PREFECT_API_URL: the server)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from medflow.config import load_params
from medflow.stages.layout import Layout

EVENT = "medflow.data.changed"
STATE_FILE = Path(".medflow") / "watch_state.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataHash:
    """A data source's content hash, with the per-file digests it was computed from."""

    source: Path
    digest: str  # sha256 over (relative path, file digest) of every file, in path order
    n_files: int
    files: dict[str, list[Any]]  # relative path -> [size, mtime_ns, sha256]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_source(source: Path, known: dict[str, list[Any]] | None = None) -> DataHash:
    """Content hash of a file or a folder (recursive). `known` (a previous DataHash.files)
    lets files whose size and mtime did not change skip the read."""
    known = known or {}
    if source.is_file():
        paths = [(source.name, source)]
    elif source.is_dir():
        paths = sorted(
            (p.relative_to(source).as_posix(), p) for p in source.rglob("*") if p.is_file()
        )
    else:
        paths = []
    files: dict[str, list[Any]] = {}
    total = hashlib.sha256()
    for rel, path in paths:
        st = path.stat()
        prev = known.get(rel)
        if prev and prev[0] == st.st_size and prev[1] == st.st_mtime_ns:
            digest = prev[2]
        else:
            digest = _file_digest(path)
        files[rel] = [st.st_size, st.st_mtime_ns, digest]
        total.update(f"{rel}\0{digest}\n".encode())
    return DataHash(source=source, digest=total.hexdigest(), n_files=len(files), files=files)


def read_state(root: Path) -> dict[str, Any]:
    """The watcher's last state ({} when absent or unreadable)."""
    path = root / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_state(root: Path, state: dict[str, Any]) -> None:
    """Temp file, then rename: a crash never leaves half a state file."""
    path = root / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".watch_state.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def source_of(root: Path) -> Path:
    """The data source params.yaml names, resolved against the project's data folder."""
    layout = Layout(root)
    return load_params(layout.params).data.resolve_source(layout.data)


def current_hash(root: Path) -> DataHash:
    """The data source's hash now, reusing the watcher's per-file digests where still valid."""
    state = read_state(root)
    return hash_source(source_of(root), state.get("files"))


def resource_id(source: Path) -> str:
    """The Prefect event resource id of a data source."""
    return f"medflow.data.{source.name or 'source'}"


@flow(name="medflow-data-watch", log_prints=True)
def watch_data(root: str = ".") -> str | None:
    """Hash data.source; when it differs from the last hash seen, emit `medflow.data.changed`
    (payload: hash, previous, n_files) and remember it. The first look only records a baseline.
    Returns the new hash when an event was emitted, else None."""
    from prefect.events import emit_event

    logger = get_run_logger()
    base = Path(root).resolve()
    state = read_state(base)
    now = hash_source(source_of(base), state.get("files"))
    previous = state.get("hash")
    new_state = {"source": str(now.source), "hash": now.digest, "files": now.files}
    if previous == now.digest:
        logger.info("data unchanged (%s, %d files): no event", now.digest[:12], now.n_files)
        return None
    if previous is None:
        write_state(base, new_state)
        logger.info(
            "first look at %s: baseline %s (%d files) recorded, no event",
            now.source,
            now.digest[:12],
            now.n_files,
        )
        return None
    event = emit_event(
        event=EVENT,
        resource={"prefect.resource.id": resource_id(now.source), "medflow.root": str(base)},
        payload={"hash": now.digest, "previous": previous, "n_files": now.n_files},
    )
    # remembered only once the event is out: a failed emit is retried on the next look
    write_state(base, new_state)
    logger.info(
        "data changed: %s -> %s (%d files); emitted %s (%s)",
        previous[:12],
        now.digest[:12],
        now.n_files,
        EVENT,
        event.id if event else "not sent",
    )
    return now.digest


def main(argv: list[str] | None = None) -> int:
    """`python -m medflow.orchestration.watch`: one look at the data source."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=".", help="project root holding params.yaml")
    args = parser.parse_args(argv)
    state = watch_data(root=args.root, return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
