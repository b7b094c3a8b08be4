"""The medflow pipeline as a Prefect flow: a task per stage of medflow.stages.STAGES.

A stage DVC reports unchanged is skipped; one that ran is recorded in dvc.lock, so `dvc repro`
and the flow agree. Transient failures are retried, data errors are not (params
`orchestration`). Runs are named train-<data hash> and publish artifacts (artifacts.py), and
the progress of ingest and train as progress artifacts (progress.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from medflow.config import load_params
from medflow.orchestration import artifacts
from medflow.orchestration.dvc_state import dvc_commit, dvc_stale
from medflow.orchestration.progress import StageProgress
from medflow.stages import STAGES
from medflow.stages.layout import Layout

log = logging.getLogger(__name__)

# --- retries: transient errors only ---------------------------------------------------------

# OSError covers TimeoutError and ConnectionError; these subclasses are mistakes, not weather
_PERMANENT_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def is_transient(exc: BaseException) -> bool:
    """I/O hiccups, timeouts and a DVC lock held by another process: worth another try.
    Data and config errors (ValueError, StageFailed such as GateFailed) are not."""
    from dvc.lock import LockError

    if isinstance(exc, LockError):
        return True
    return isinstance(exc, OSError | TimeoutError) and not isinstance(exc, _PERMANENT_OS_ERRORS)


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result()
        except BaseException as raised:  # noqa: BLE001 - we only classify it
            exc = raised
    retry = exc is not None and is_transient(exc)
    if not retry:
        get_run_logger().info("not retried: %s is not a transient error", type(exc).__name__)
    return retry


# --- the task -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Skipped:
    """A stage DVC reported unchanged: its outputs are current, nothing ran."""

    stage: str
    reason: str = "unchanged (dvc status clean)"


class StageRunFailed(RuntimeError):
    """A stage failed; the message names the stage and carries its reason."""


def _run_stage(name: str, root: str, stale: bool | None = None, force: bool = False) -> Any:
    """Skip the stage when DVC says it is unchanged; else run it and record it in dvc.lock.
    `stale`: what the flow already knows (None: ask DVC now)."""
    logger = get_run_logger()
    layout = Layout(Path(root))
    try:
        if force:
            changed: bool | None = True
        elif stale is not None:
            changed = stale
        else:
            found = dvc_stale(layout.root, name)
            changed = None if found is None else name in found
        if changed is False:
            logger.info("stage %s: unchanged, skipped", name)
            return Skipped(name)
        stage = STAGES[name]
        # a stage that reports progress shows it as the <stage>-progress artifact
        progress = StageProgress(name) if stage.reports_progress else None
        result = stage.execute(layout, load_params(layout.params), progress=progress)
        if progress is not None:
            progress.finish()
        if changed is not None:  # a DVC repo: keep dvc.lock in step with what ran
            dvc_commit(layout.root, name)
        return result
    finally:
        publish = artifacts.AFTER_STAGE.get(name)
        if publish is not None:
            try:
                publish(layout)
            except Exception as exc:  # noqa: BLE001 - an artifact must never fail a stage
                logger.warning("artifacts after %s not published: %s", name, exc)


_TASK = {"cache_policy": NO_CACHE, "log_prints": True, "retry_condition_fn": _retry_transient}
# one task per stage, so the UI and the task-run names show the stage
_TASKS = {name: task(name=name, **_TASK)(_run_stage) for name in STAGES}


# --- the flow -------------------------------------------------------------------------------


def _run_name() -> str:
    """train-<first 12 hex of the data source hash> (from the trigger's event, or computed)."""
    from prefect.runtime import flow_run

    from medflow.orchestration.watch import current_hash

    params = flow_run.parameters
    digest = params.get("data_hash")
    if not digest:
        try:
            h = current_hash(Path(params.get("root", ".")).resolve())
            digest = h.digest if h.n_files else "nodata"
        except Exception:  # noqa: BLE001 - a name must never fail the run
            digest = "unknown"
    return f"train-{digest[:12]}"


@flow(name="medflow-pipeline", flow_run_name=_run_name, log_prints=True)
def pipeline(
    root: str = ".",
    stages: list[str] | None = None,
    data_hash: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run the stages in order (all by default, or the named subset, e.g. to re-judge a model
    with new gate thresholds), skipping those DVC reports unchanged (force: run them anyway).
    A failing stage (e.g. the gate) fails the flow run with the stage's name and reason.
    data_hash: the data source hash that started this run (the watcher's event), for the name."""
    layout = Layout(Path(root).resolve())
    logger = get_run_logger()
    params = load_params(layout.params)  # fail on config before any heavy work
    unknown = sorted(set(stages or ()) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    wanted = [s for s in STAGES if (stages is None or s in stages)]
    if not params.data.is_synthetic and "synth" in wanted:
        wanted.remove("synth")  # synthetic data is only made when it is the source
    o = params.orchestration
    # one `dvc status` for all stages up front; after a stage ran, the next ones ask again
    stale = None if force else dvc_stale(layout.root)
    if stale is None and not force:
        logger.info("%s is not a DVC repository: every stage runs", layout.root)
    results: dict[str, Any] = {}
    ran = False
    for name in wanted:
        stage = _TASKS[name].with_options(
            retries=o.retries,
            retry_delay_seconds=o.retry_delay_seconds,
            timeout_seconds=o.stage_timeout_seconds,
        )
        known = None if (ran or stale is None) else name in stale
        always = STAGES[name].runs_always
        if not force and always is not None and always(params):
            known = True
        try:
            results[name] = stage(name, str(layout.root), stale=known, force=force)
        except Exception as exc:
            raise StageRunFailed(f"stage {name} failed: {type(exc).__name__}: {exc}") from exc
        ran = ran or not isinstance(results[name], Skipped)
        logger.info("stage %s: %s", name, results[name])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=".", help="project root holding params.yaml")
    parser.add_argument("--stages", nargs="+", choices=STAGES, help="run only these stages")
    parser.add_argument("--force", action="store_true", help="run stages DVC says are unchanged")
    args = parser.parse_args(argv)
    state = pipeline(root=args.root, stages=args.stages, force=args.force, return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
