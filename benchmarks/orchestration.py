"""The Prefect flow with every stage unchanged against a no-op `dvc repro`, in one run.

Measures, on one up-to-date project (by default a throw-away copy with tiny params that the
script first brings up to date with a real `dvc repro`):

1. seconds of a no-op `dvc repro` (the CLI, as `make run` calls it), best of --repeat;
2. seconds of the flow `medflow-pipeline` on the same project, every stage skipped because
   DVC reports it unchanged, warm (this process already talked to the Prefect API), best of
   --repeat, and the ratio of 2 to 1;
3. for reference: the first flow run of the process (pays the ephemeral server's start, or
   the connection to $PREFECT_API_URL) and `python -m medflow.orchestration.pipeline` as a
   fresh process.

Targets: the flow at most 2x the no-op `dvc repro` (ratio <= 2.0), and the no-op
`dvc repro` in <= 3 s. It reports, it does not gate: the exit code is 0 either way.

    .venv/bin/python benchmarks/orchestration.py              # tiny copy, ~2 min with setup
    .venv/bin/python benchmarks/orchestration.py --root .     # this project (must be current)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 2.0
TARGET_DVC_SECONDS = 3.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds


def _prepare(root: Path | None, work: Path) -> Path:
    if root is not None:
        return root.resolve()
    sys.path.insert(0, str(ROOT))
    from tests.helpers.pipeline_copy import make_copy

    repo = make_copy(work / "project")
    print(f"setup: tiny project copy in {repo}; dvc repro (real, once) ...", flush=True)
    start = time.perf_counter()
    _timed(["dvc", "repro"], repo)
    print(f"setup: dvc repro took {time.perf_counter() - start:.1f} s", flush=True)
    return repo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, help="an up-to-date project (default: tiny copy)")
    parser.add_argument("--repeat", type=int, default=3, help="best of n (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="medflow-orch-bench-"))
    try:
        if "PREFECT_API_URL" not in os.environ:
            # an ephemeral server with its own database, not the project's
            os.environ["PREFECT_HOME"] = str(work / "prefect_home")
            os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        repo = _prepare(args.root, work)
        sys.path.insert(0, str(ROOT))
        from medflow.orchestration.dvc_state import dvc_stale
        from medflow.orchestration.pipeline import Skipped, pipeline

        stale = dvc_stale(repo)
        if stale:
            print(f"WARNING: {repo} is not up to date ({sorted(stale)}): run `dvc repro` first")

        dvc_runs = [_timed(["dvc", "repro"], repo) for _ in range(args.repeat)]

        def flow_once() -> float:
            start = time.perf_counter()
            state = pipeline(root=str(repo), return_state=True)
            seconds = time.perf_counter() - start
            if not state.is_completed():
                raise SystemExit(f"flow run failed: {state.message}")
            ran = [k for k, v in state.result().items() if not isinstance(v, Skipped)]
            if ran:
                print(f"WARNING: stages ran instead of being skipped: {ran}")
            return seconds

        first = flow_once()
        warm = [flow_once() for _ in range(args.repeat)]
        cold_process = _timed(
            [sys.executable, "-m", "medflow.orchestration.pipeline", "--root", str(repo)], ROOT
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    dvc_s, flow_s = min(dvc_runs), min(warm)
    ratio = flow_s / dvc_s
    figures = {
        "dvc_repro_noop_s": round(dvc_s, 3),
        "flow_all_skipped_warm_s": round(flow_s, 3),
        "ratio": round(ratio, 2),
        "flow_first_run_s": round(first, 3),
        "flow_fresh_process_s": round(cold_process, 3),
        "prefect_api": os.environ.get("PREFECT_API_URL", "ephemeral"),
    }
    verdict_ratio = "PASS" if ratio <= TARGET_RATIO else "MISS"
    verdict_dvc = "PASS" if dvc_s <= TARGET_DVC_SECONDS else "MISS"
    print()
    print(f"{'measure':<46} {'seconds':>8}  target")
    print(f"{'1 no-op dvc repro (CLI), best of ' + str(args.repeat):<46} {dvc_s:8.2f}"
          f"  <= {TARGET_DVC_SECONDS:.0f} s  {verdict_dvc}")  # fmt: skip
    print(f"{'2 flow, every stage skipped (warm)':<46} {flow_s:8.2f}"
          f"  ratio {ratio:.2f}x <= {TARGET_RATIO:.0f}x  {verdict_ratio}")  # fmt: skip
    print(f"{'- first flow run of the process':<46} {first:8.2f}  (reference)")
    print(
        f"{'- python -m medflow.orchestration.pipeline, fresh process':<46}"
        f" {cold_process:8.2f}  (reference)"
    )
    print(f"\nratio flow / dvc repro: {ratio:.2f}x  {verdict_ratio}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
