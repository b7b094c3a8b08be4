"""benchmarks/serve.py --prediction-log: what the prediction log costs a request.

One Bento, served twice at the same time: with the log off and with it on
($MEDFLOW_SERVE_PREDICTION_LOG, each server its own SQLite file). The same client sends the
same file to them in alternating blocks (off on, on off, off on, ...: drift in the load of a
shared machine falls on both alike), at concurrency 1 and 32, in several sessions, each with a
fresh pair of servers. Then the rows: the log-on store must hold one row per answered request,
the log-off store none, so that the comparison cannot pass with logging silently off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OFF, ON = "off", "on"
MODES = (OFF, ON)
TARGET_ADDED_P50_MS = 0.5  # at concurrency 1
TARGET_THROUGHPUT_RATIO = 0.95  # at concurrency 32, log on / log off
# After each block: the log's writer thread flushes its queue (every ~0.5 s), so that the
# inserts of a log-on block are not paid by the next block's clock.
PAUSE_S = 1.0
FLUSH_WAIT_S = 15.0  # the longest the rows check waits for the queue to reach the store

# (url, data, concurrency, n, seconds) -> awaitable (latencies ms, errors, wall s): serve._load
Load = Callable[..., Any]
# (mode, session number) -> a running server with .url and .pid (serve_bento, the mode's env)
Serve = Callable[[str, int], contextlib.AbstractContextManager[Any]]


@dataclass
class Side:
    """One mode at one concurrency, over all its blocks."""

    mode: str
    concurrency: int
    latencies: list[float] = field(default_factory=list, repr=False)
    wall_s: float = 0.0
    errors: int = 0
    answered: int = 0  # 200 answers, warm-ups included: the rows the log must hold
    block_p50_ms: list[float] = field(default_factory=list)
    block_rps: list[float] = field(default_factory=list)
    # CPU seconds of the server's process tree over the timed requests (and the pause after
    # them, when the log's writer inserts the last rows): less at the mercy of other jobs'
    # load than the latencies are
    cpu_s: float = 0.0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")

    @property
    def p95_ms(self) -> float:
        if len(self.latencies) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies, n=20, method="inclusive")[18]

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s else float("nan")

    @property
    def cpu_ms(self) -> float:
        """Server CPU per timed request."""
        return 1000 * self.cpu_s / len(self.latencies) if self.latencies else float("nan")

    def figures(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "latencies"}
        out |= {"timed": len(self.latencies), "p50_ms": self.p50_ms, "p95_ms": self.p95_ms}
        return out | {"rps": self.rps, "cpu_ms": self.cpu_ms}


def server_env(log_on: bool, store: Path) -> dict[str, str]:
    """This process's environment with the prediction log switched and pointed at `store`."""
    return {
        **os.environ,
        "MEDFLOW_SERVE_PREDICTION_LOG": "true" if log_on else "false",
        "MEDFLOW_SERVE_PREDICTION_LOG_URL": f"sqlite:///{store.resolve()}",
    }


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children (a server and its workers)."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def count_rows(store: Path) -> int:
    """Rows of the store's `predictions` table; 0 when the file or the table does not exist."""
    if not store.exists():
        return 0
    with contextlib.closing(sqlite3.connect(store, timeout=30)) as db:
        try:
            return db.execute("SELECT count(*) FROM predictions").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            raise


def probe(url: str, data: bytes, headers: Mapping[str, str]) -> str | None:
    """One POST /predict; the answer's prediction_id (None when absent or null)."""
    import httpx

    files = {"file": ("image.dcm", data, "application/dicom")}
    resp = httpx.post(f"{url}/predict", files=files, headers=dict(headers), timeout=60)
    resp.raise_for_status()
    return resp.json().get("prediction_id")


def run_blocks(
    servers: Mapping[str, Any],
    data: bytes,
    concurrency: int,
    blocks: int,
    per_block: int,
    load: Load,
) -> dict[str, Side]:
    """`blocks` blocks of `per_block` timed requests per mode (`servers`: mode -> a running
    server with .url and .pid), in ABBA order, each block after a warm-up of its own (the
    other server ran last: caches, connections)."""
    sides = {mode: Side(mode, concurrency) for mode in MODES}
    warm_up = max(5, concurrency)
    for i in range(blocks):
        for mode in (OFF, ON) if i % 2 == 0 else (ON, OFF):
            side = sides[mode]
            url, pid = servers[mode].url, servers[mode].pid
            lat, errors, _ = asyncio.run(load(url, data, concurrency, warm_up, None))
            side.answered += len(lat)
            side.errors += len(errors)
            cpu = tree_cpu_s(pid)
            lat, errors, wall = asyncio.run(load(url, data, concurrency, per_block, None))
            if errors:
                print(f"  {mode} c={concurrency} block {i}: {len(errors)} errors, {errors[0]}")
            side.latencies += lat
            side.wall_s += wall
            side.errors += len(errors)
            side.answered += len(lat)
            side.block_p50_ms.append(statistics.median(lat) if lat else float("nan"))
            side.block_rps.append(len(lat) / wall)
            time.sleep(PAUSE_S)
            side.cpu_s += tree_cpu_s(pid) - cpu
    return sides


def merge(sides: list[Side]) -> Side:
    """One Side of several sessions' (same mode and concurrency)."""
    out = Side(sides[0].mode, sides[0].concurrency)
    for s in sides:
        out.latencies += s.latencies
        out.wall_s += s.wall_s
        out.errors += s.errors
        out.answered += s.answered
        out.block_p50_ms += s.block_p50_ms
        out.block_rps += s.block_rps
        out.cpu_s += s.cpu_s
    return out


Session = dict[int, dict[str, Side]]  # concurrency -> mode -> Side


def run_sessions(
    serve: Serve,
    stores: Mapping[str, Path],
    data: bytes,
    levels: tuple[int, ...],
    sessions: int,
    blocks: int,
    per_block: int,
    load: Load,
    headers: Mapping[str, str],
) -> tuple[list[Session], dict]:
    """`sessions` times: a fresh pair of servers (so that neither mode keeps a lucky or an
    unlucky process: the same code runs at ~7 or ~9.5 ms from process to process here), the
    blocks at each level. Returns the sessions' figures and the rows check."""
    results: list[Session] = []
    ids: dict[str, str | None] = {}
    expected = len(MODES) - 1  # the probe's row, in the log-on store
    running = []
    for n in range(sessions):
        with contextlib.ExitStack() as stack:
            order = MODES if n % 2 == 0 else MODES[::-1]  # who starts first alternates too
            servers = {mode: stack.enter_context(serve(mode, n)) for mode in order}
            if not ids:
                ids = {mode: probe(servers[mode].url, data, headers) for mode in MODES}
            results.append(
                {c: run_blocks(servers, data, c, blocks, per_block, load) for c in levels}
            )
            expected += sum(sides[ON].answered for sides in results[-1].values())
            running.append(wait_for_rows(stores[ON], expected))
    rows = {
        "expected_on": expected,
        "on_rows_running": running,  # after each session, before its servers stopped
        "on_rows": count_rows(stores[ON]),  # after the last shutdown (close() flushed too)
        "off_rows": count_rows(stores[OFF]),
        "on_probe_id": bool(ids[ON]),
        "off_probe_id": bool(ids[OFF]),
    }
    rows["ok"] = (
        rows["on_rows"] == expected
        and rows["off_rows"] == 0
        and rows["on_probe_id"]
        and not rows["off_probe_id"]
    )
    return results, rows


def wait_for_rows(store: Path, expected: int, timeout: float = FLUSH_WAIT_S) -> int:
    """The store's row count once it reaches `expected` (or after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while (rows := count_rows(store)) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return rows


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _paired(off: list[float], on: list[float], ratio: bool = False) -> str:
    """Median and range over the block pairs of on - off (`ratio`: on / off), each log-on
    block against the off block next to it."""
    each = [b / a if ratio else b - a for a, b in zip(off, on, strict=True)]
    f = "{:.3f}x" if ratio else "{:+.2f} ms"
    low, mid, high = (f.format(v) for v in (min(each), statistics.median(each), max(each)))
    return f"median {mid}, {low} to {high}"


def _cost(session: Session) -> tuple[float, float, float]:
    """(added p50 ms, added p95 ms) at the lowest level and the throughput ratio at the
    highest."""
    low, high = session[min(session)], session[max(session)]
    return (
        low[ON].p50_ms - low[OFF].p50_ms,
        low[ON].p95_ms - low[OFF].p95_ms,
        high[ON].rps / high[OFF].rps,
    )


def report(sessions: list[Session], rows: dict, out: dict) -> None:
    """Print the figures and verdicts; fill `out` with them (for --json)."""
    pooled: Session = {
        c: {mode: merge([s[c][mode] for s in sessions]) for mode in MODES} for c in sessions[0]
    }
    print(
        f"{'log':<4} {'conc':>4} {'timed':>6} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>8}"
        f" {'errors':>6} {'server CPU ms/request':>22}"
    )
    for sides in pooled.values():
        for s in sides.values():
            print(
                f"{s.mode:<4} {s.concurrency:>4} {len(s.latencies):>6} {s.p50_ms:8.2f}"
                f" {s.p95_ms:8.2f} {s.rps:8.1f} {s.errors:>6} {s.cpu_ms:22.2f}"
            )
    low, high = min(pooled), max(pooled)
    each = [_cost(s) for s in sessions]
    for n, (added, added95, ratio) in enumerate(each, 1):
        print(
            f"session {n}: c={low} p50 {added:+.2f} ms (p95 {added95:+.2f}),"
            f" c={high} req/s {ratio:.3f}x"
        )
    added, added95, ratio = _cost(pooled)
    print(
        f"concurrency {low}: log on adds {added:+.2f} ms to the p50 (p95 {added95:+.2f})"
        f" (target <= {TARGET_ADDED_P50_MS} ms)  {_verdict(added <= TARGET_ADDED_P50_MS)};"
        f" per block pair: {_paired(pooled[low][OFF].block_p50_ms, pooled[low][ON].block_p50_ms)}"
    )
    print(
        f"concurrency {high}: log on / off throughput {ratio:.3f}x"
        f" (target >= {TARGET_THROUGHPUT_RATIO}x)  {_verdict(ratio >= TARGET_THROUGHPUT_RATIO)};"
        f" per block pair:"
        f" {_paired(pooled[high][OFF].block_rps, pooled[high][ON].block_rps, ratio=True)}"
    )
    cpu = {c: sides[ON].cpu_ms - sides[OFF].cpu_ms for c, sides in pooled.items()}
    print(
        "server CPU per request, log on - off (for reference: the work logging adds): "
        + "; ".join(
            f"c={c} {cpu[c]:+.3f} ms ({cpu[c] / sides[OFF].cpu_ms:+.1%}; per session"
            f" {', '.join(f'{s[c][ON].cpu_ms - s[c][OFF].cpu_ms:+.2f}' for s in sessions)})"
            for c, sides in pooled.items()
        )
    )
    print(
        f"rows: log-on store {rows['on_rows']} for {rows['expected_on']} answers"
        f" (after each session, servers still up: {rows['on_rows_running']}), probe"
        f" prediction_id {'present' if rows['on_probe_id'] else 'MISSING'}; log-off store"
        f" {rows['off_rows']}, probe prediction_id"
        f" {'absent' if not rows['off_probe_id'] else 'PRESENT'}  {_verdict(rows['ok'])}"
    )
    out.update(
        {
            "loads": {c: {m: s.figures() for m, s in sides.items()} for c, sides in pooled.items()},
            "sessions": [
                {"added_p50_ms": a, "added_p95_ms": a95, "throughput_ratio": r}
                for a, a95, r in each
            ],
            "added_p50_ms": added,
            "added_p95_ms": added95,
            "throughput_ratio": ratio,
            "added_cpu_ms_per_request": cpu,
            "rows": rows,
            "targets_met": {
                "added_p50": added <= TARGET_ADDED_P50_MS,
                "throughput": ratio >= TARGET_THROUGHPUT_RATIO,
                "rows": rows["ok"],
            },
        }
    )
