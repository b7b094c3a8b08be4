"""Ingest speed and memory against a bare pydicom loop, in one run on the same files.

Measures, on a synthetic PACS-like CT corpus (benchmarks/_dicom_corpus.py):

1. files/s of a bare `pydicom.dcmread(f).pixel_array` loop (the floor any ingest pays);
2. files/s of the loop a user would write by hand on the same files: `dcmread`,
   `pixel_array`, `dicognito.Anonymizer().anonymize`, `save_as` (one Anonymizer for the run,
   as a user keeping one mapping would; no labels, splits, audit, quarantine or manifest);
3. files/s of `run_ingest` with ingest.workers = 1, and its ratio to both loops;
4. files/s with ingest.workers = 2, and its ratio to 1 worker;
5. peak RSS of `run_ingest` (1 worker) on --files vs --large-files files, each in a fresh
   process, and their ratio: a streaming ingest stays flat as the file count grows.

Targets (issues "benchmark the ingest" and 16): 1 worker >= 0.8x the hand-written loop,
2 workers >= 1.7x 1 worker, peak memory at 10k files <= 1.3x that at 1k. It reports, it
does not gate: the exit code is 0 whether targets are met or missed.

    .venv/bin/python benchmarks/ingest.py                 # 1k / 10k files of 512 x 512
    .venv/bin/python benchmarks/ingest.py --quick         # a smoke run in well under a minute
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from _dicom_corpus import LABELS_FILE, TRANSFER_SYNTAXES, write_corpus

if TYPE_CHECKING:
    from medflow.data.ingest import IngestConfig

ROOT = Path(__file__).resolve().parents[1]
KEY = b"medflow-benchmark-key-not-a-secret"

TARGET_ONE_WORKER = 0.8  # x the hand-written de-identification loop, at least
TARGET_TWO_WORKERS = 1.7  # x one worker, at least
TARGET_MEMORY = 1.3  # peak RSS at --large-files over --files, at most


@dataclass(frozen=True)
class Timing:
    files: int
    seconds: float

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds


def _corpus_files(source: Path) -> list[Path]:
    lines = (source / LABELS_FILE).read_text().splitlines()[1:]
    return [source / line.rsplit(",", 1)[0] for line in lines]


def _link_subset(source: Path, target: Path, n: int) -> None:
    """The first n files of a corpus as a corpus of its own (hard links: same page cache)."""
    lines = (source / LABELS_FILE).read_text().splitlines()
    for line in lines[1 : n + 1]:
        rel = line.rsplit(",", 1)[0]
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(source / rel, target / rel)
    (target / LABELS_FILE).write_text("\n".join(lines[: n + 1]) + "\n")


def _warm(files: list[Path]) -> None:
    """Read every file once so neither candidate pays the disk reads for the other."""
    for f in files:
        f.read_bytes()


def bare_loop(files: list[Path], repeat: int) -> Timing:
    """The floor: parse and decode every file, nothing else (best of `repeat`)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for f in files:
            pydicom.dcmread(f).pixel_array  # noqa: B018 (decoding is the point)
        best = min(best, time.perf_counter() - start)
    return Timing(len(files), best)


def hand_loop(files: list[Path], repeat: int, scratch: Path) -> Timing:
    """What a user writes by hand: read, decode, de-identify with dicognito, write (best of
    `repeat`). The bar the ingest is held to (it also audits, labels, splits, quarantines)."""
    from dicognito.anonymizer import Anonymizer

    best = float("inf")
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="hand-loop-", dir=scratch) as out:
            start = time.perf_counter()
            anonymizer = Anonymizer()
            for i, f in enumerate(files):
                ds = pydicom.dcmread(f)
                ds.pixel_array  # noqa: B018 (decoding is part of the work)
                anonymizer.anonymize(ds)
                ds.save_as(Path(out) / f"{i}.dcm")
            best = min(best, time.perf_counter() - start)
    return Timing(len(files), best)


def _decode_all(files: list[Path]) -> tuple[float, float]:
    """Decode files; the (start, end) of the work on the system-wide monotonic clock."""
    start = time.monotonic()
    for f in files:
        pydicom.dcmread(f).pixel_array  # noqa: B018
    return start, time.monotonic()


def bare_loop_parallel(files: list[Path], processes: int) -> Timing:
    """The bare loop split over `processes` processes: what this machine can scale to.

    Timed from the first process starting its share to the last one finishing, with
    start-up and decoder loading done before: the ceiling for as many ingest workers.
    """
    context = multiprocessing.get_context("spawn")
    n_chunks = processes * 10  # small tasks: a process that starts late just takes fewer
    chunks = [files[i::n_chunks] for i in range(n_chunks)]
    warm_up = (files[:20],)  # every transfer syntax of the corpus: loads each decoder
    with context.Pool(processes, initializer=_decode_all, initargs=warm_up) as pool:
        spans = pool.map(_decode_all, chunks, chunksize=1)
    return Timing(len(files), max(end for _, end in spans) - min(start for start, _ in spans))


def _config(params_file: Path, workers: int) -> IngestConfig:
    # medflow is imported late: spawned workers re-import this module and need none of it.
    from medflow.config import load_params
    from medflow.data.ingest import IngestConfig

    params = load_params(params_file)
    ingest = params.ingest.model_copy(update={"workers": workers})
    return IngestConfig.from_params(params.model_copy(update={"ingest": ingest}))


def _ingest_once(source: Path, workers: int, params_file: Path, scratch: Path) -> float:
    """Seconds for one run_ingest of source into a fresh folder (ingest is incremental)."""
    from medflow.data.ingest import run_ingest

    config = _config(params_file, workers)
    with tempfile.TemporaryDirectory(prefix="ingest-out-", dir=scratch) as out:
        start = time.perf_counter()
        result = run_ingest(config, source, Path(out) / "ingested", key=KEY)
        seconds = time.perf_counter() - start
    n_files = len(_corpus_files(source))
    if result.n_images != n_files or result.n_quarantined:
        # A faster ingest that drops files is not faster: make that impossible to miss.
        print(
            f"WARNING: {n_files} files gave {result.n_images} images and"
            f" {result.n_quarantined} quarantined ({result.outcomes}); the figures below"
            " do not measure a complete ingest",
            file=sys.stderr,
        )
    return seconds


def ingest_timing(
    source: Path, workers: int, params_file: Path, scratch: Path, repeat: int
) -> Timing:
    best = min(_ingest_once(source, workers, params_file, scratch) for _ in range(repeat))
    return Timing(len(_corpus_files(source)), best)


def peak_memory(source: Path, params_file: Path, scratch: Path) -> dict[str, float]:
    """Peak RSS of a 1-worker ingest of source, measured in a fresh Python process."""
    cmd = [sys.executable, __file__, "--_child", str(source), "--params", str(params_file)]
    cmd += ["--scratch", str(scratch)]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB.

    Linux's VmHWM, not getrusage's ru_maxrss: ru_maxrss survives fork and exec, so a child
    would start at its parent's peak (this benchmark's parent holds more than an ingest).
    """
    status = Path("/proc/self/status")
    if status.exists():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB, except macOS
    return peak, peak


def _child(source: Path, params_file: Path, scratch: Path) -> None:
    """In the fresh process: RSS after imports, then the ingest's peak."""
    import medflow.data.ingest  # noqa: F401 (imports are not what is measured)

    before, _ = _rss_mib()
    seconds = _ingest_once(source, 1, params_file, scratch)
    _, peak = _rss_mib()
    n = len(_corpus_files(source))
    print(json.dumps({"files": n, "rss_after_imports_mib": before, "peak_rss_mib": peak,
                      "files_per_s": n / seconds}))  # fmt: skip


def profile_ingest(source: Path, params_file: Path, scratch: Path, out: Path) -> None:
    """cProfile of a 1-worker ingest (a separate run: profiling slows it down)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(_ingest_once, source, 1, params_file, scratch)
    profiler.dump_stats(out)
    pstats.Stats(str(out), stream=sys.stderr).sort_stats("cumulative").print_stats(30)


def ratios(results: dict) -> dict[str, float]:
    """The ratios the targets are about (those whose figures were measured)."""
    speed = {k: v["files_per_s"] for k, v in results.items() if "files_per_s" in v}
    out = {
        "one_worker_vs_hand_loop": speed["ingest_1_worker"] / speed["hand_loop"],
        "one_worker_vs_bare": speed["ingest_1_worker"] / speed["bare_loop"],
    }
    if "ingest_2_workers" in results:
        out["two_workers_vs_one"] = speed["ingest_2_workers"] / speed["ingest_1_worker"]
        out["bare_2_processes_vs_1"] = speed["bare_loop_2_processes"] / speed["bare_loop"]
    if "memory_large" in results:
        small, large = results["memory_small"], results["memory_large"]
        out["memory_large_vs_small"] = large["peak_rss_mib"] / small["peak_rss_mib"]
    return out


def _verdict(value: float, target: float, at_least: bool) -> str:
    return "PASS" if (value >= target if at_least else value <= target) else "MISS"


def report(results: dict) -> str:
    """The figures as a table: value, ratio, target, PASS/MISS."""
    setup, r = results["setup"], results["ratios"]

    def speed(name: str) -> str:
        return f"{results[name]['files_per_s']:.1f} files/s"

    def rss(m: dict) -> str:
        grown = m["peak_rss_mib"] - m["rss_after_imports_mib"]
        return f"{m['peak_rss_mib']:.0f} MiB (+{grown:.0f} over imports)"

    one = r["one_worker_vs_hand_loop"]
    rows = [
        ("", "measured", "ratio", "target", ""),
        ("bare loop: dcmread(f).pixel_array", speed("bare_loop"), "", "", ""),
        ("hand loop: dcmread, pixel_array, dicognito, save_as", speed("hand_loop"), "", "", ""),
        ("run_ingest, workers=1", speed("ingest_1_worker"), f"{one:.2f}x hand loop",
         f">= {TARGET_ONE_WORKER}x", _verdict(one, TARGET_ONE_WORKER, True)),
        ("", "", f"{r['one_worker_vs_bare']:.2f}x bare loop", "", ""),
    ]  # fmt: skip
    if "two_workers_vs_one" in r:
        two = r["two_workers_vs_one"]
        rows += [
            ("run_ingest, workers=2", speed("ingest_2_workers"), f"{two:.2f}x workers=1",
             f">= {TARGET_TWO_WORKERS}x", _verdict(two, TARGET_TWO_WORKERS, True)),
            ("  (bare loop in 2 processes)", speed("bare_loop_2_processes"),
             f"{r['bare_2_processes_vs_1']:.2f}x bare", "machine ceiling", ""),
        ]  # fmt: skip
    tail = []
    if "memory_large_vs_small" in r:
        small, large, mem = (
            results["memory_small"],
            results["memory_large"],
            r["memory_large_vs_small"],
        )
        rows += [
            (f"peak RSS, {small['files']} files, workers=1", rss(small), "", "", ""),
            (f"peak RSS, {large['files']} files, workers=1", rss(large),
             f"{mem:.2f}x {small['files']} files", f"<= {TARGET_MEMORY}x",
             _verdict(mem, TARGET_MEMORY, False)),
        ]  # fmt: skip
        tail = [
            "",
            f"the {large['files']}-file ingest (workers=1) ran at"
            f" {large['files_per_s']:.1f} files/s",
        ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        f"medflow ingest benchmark: {setup['files']} files of {setup['size']}x{setup['size']}"
        f" 16-bit CT ({setup['mix']}); {setup['cpus']} CPU(s), Python {setup['python']},"
        f" pydicom {setup['pydicom']}",
        "",
        *("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows),
        *tail,
    ]
    return "\n".join(line.rstrip() for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000, help="files for the speed figures")
    parser.add_argument("--large-files", type=int, default=10000, help="files for memory")
    parser.add_argument("--size", type=int, default=512, help="image rows and columns")
    parser.add_argument("--repeat", type=int, default=1, help="best of n for the speed figures")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200/1000 files of 128")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--profile", type=Path, help="write a cProfile of a 1-worker ingest here")
    parser.add_argument(
        "--speed-only", action="store_true", help="skip the workers=2 and memory figures"
    )
    parser.add_argument("--scratch", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # run_ingest raises medflow to INFO
        handler.setLevel(logging.WARNING)
    if args._child:
        _child(args._child, args.params, args.scratch)
        return
    if args.quick:
        args.files, args.large_files, args.size = 200, 1000, 128
    if not 0 < args.files <= args.large_files:
        parser.error(f"need 0 < --files <= --large-files, got {args.files}, {args.large_files}")

    with tempfile.TemporaryDirectory(prefix="medflow-bench-ingest-") as tmp:
        scratch = Path(tmp)
        large, small = scratch / "large", scratch / "small"
        start = time.perf_counter()
        write_corpus(large, args.large_files, args.size)
        small.mkdir()
        _link_subset(large, small, args.files)
        print(
            f"corpus: {args.large_files} files of {args.size}x{args.size} written in"
            f" {time.perf_counter() - start:.0f} s under {scratch}",
            file=sys.stderr,
        )
        files = _corpus_files(small)
        _warm(_corpus_files(large))
        steps = [
            ("bare_loop", lambda: bare_loop(files, args.repeat)),
            ("hand_loop", lambda: hand_loop(files, args.repeat, scratch)),
            ("bare_loop_2_processes", lambda: bare_loop_parallel(files, 2)),
            ("ingest_1_worker", lambda: ingest_timing(small, 1, args.params, scratch, args.repeat)),
            (
                "ingest_2_workers",
                lambda: ingest_timing(small, 2, args.params, scratch, args.repeat),
            ),
        ]
        results: dict = {}
        if args.speed_only:
            steps = [
                step for step in steps if step[0] in ("bare_loop", "hand_loop", "ingest_1_worker")
            ]
        for name, step in steps:
            print(f"measuring {name} ...", file=sys.stderr)
            timing = step()
            results[name] = {**asdict(timing), "files_per_s": timing.files_per_s}
        for name, source in (("memory_small", small), ("memory_large", large))[
            : 0 if args.speed_only else 2
        ]:
            print(f"measuring {name} (fresh process) ...", file=sys.stderr)
            results[name] = peak_memory(source, args.params, scratch)
        if args.profile:
            profile_ingest(small, args.params, scratch, args.profile)
    mix = ", ".join(f"{share:.0%} {ts.name}" for ts, share in TRANSFER_SYNTAXES)
    results["setup"] = {
        "files": args.files,
        "large_files": args.large_files,
        "size": args.size,
        "mix": mix,
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "repeat": args.repeat,
    }
    results["ratios"] = ratios(results)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
