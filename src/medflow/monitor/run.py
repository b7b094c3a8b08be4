"""`medflow monitor`'s work: a window of the prediction log against each model's reference.

For each model tag in the window: input drift (validate's rules), the PSI of the predicted
probabilities and live performance from feedback; then the report folder (written whole or
not at all) and one drift_scores row per rule in the store, for the Bento's /metrics.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from medflow.config import Params
from medflow.errors import StageFailed
from medflow.io import atomic_dir
from medflow.monitor.judge import monitor_model
from medflow.monitor.reference import load_reference
from medflow.monitor.report import write_report
from medflow.monitor.result import MonitorResult

log = logging.getLogger(__name__)

DOCS_DIR = "docs"  # the drift suites' Data Docs, one folder per model tag


class MonitorError(StageFailed):
    """The monitor cannot run: no prediction log, or the log's database is unreachable."""


def sqlite_path(url: str, root: Path) -> Path | None:
    """The file of a SQLite URL (a relative path from root); None for another database."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    path = Path(parsed.database).expanduser()
    return path if path.is_absolute() else Path(root) / path


def open_store(url: str, root: Path) -> Any:
    """The prediction log's engine (medflow.serving.prediction_log.engine_for).

    Raises:
        FileNotFoundError: a SQLite log that does not exist yet (the Bento creates it).
        MonitorError: the database cannot be reached.
    """
    import sqlalchemy as sa

    from medflow.serving.prediction_log import engine_for

    path = sqlite_path(url, root)
    if path is not None and not path.is_file():
        raise FileNotFoundError(
            f"no prediction log at {path}: serve the Bento first (it creates the log with its"
            " first prediction), or point package.serve.prediction_log_url (or"
            " $MEDFLOW_SERVE_PREDICTION_LOG_URL) at the Bento's log"
        )
    try:
        engine = engine_for(url, root)
        with engine.connect():
            pass
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        # SQLAlchemy's messages may quote the URL with its password: the type only
        shown = sa.make_url(url).render_as_string(hide_password=True)
        raise MonitorError(
            f"the prediction log at {shown} cannot be reached ({type(exc).__name__})"
        ) from None
    return engine


def run_monitor(
    params: Params,
    store_url: str,
    out_dir: Path,
    *,
    root: Path,
    window_hours: float | None = None,
    now: datetime | None = None,
) -> MonitorResult:
    """Monitor the window (now - hours, now] of the prediction log at store_url; write the
    report into out_dir and the drift scores into the store.

    Args:
        params: the project's params (monitor, validate.drift, evaluate).
        store_url: the prediction log (package.serve.prediction_log_url as resolved where the
            Bento runs); a relative SQLite path is from root.
        window_hours: instead of monitor.window_hours.
        now: the window's end (default: now, UTC).

    Raises:
        FileNotFoundError, MonitorError: see open_store.
        HandoffError: a model's monitoring.json is damaged.
    """
    from medflow.serving.prediction_log import latest_scores, read_window, write_scores

    hours = window_hours if window_hours is not None else params.monitor.window_hours
    if hours <= 0:
        raise ValueError(f"the window must be longer than 0 hours, got {hours}")
    until = (now or datetime.now(UTC)).astimezone(UTC)
    since = until - timedelta(hours=hours)
    engine = open_store(store_url, root)
    try:
        window = read_window(engine, since, until)
        previous = latest_scores(engine)
        before = frozenset((r["model_tag"], r["name"]) for r in previous if r["broken"])
        store = engine.url.render_as_string(hide_password=True)
        log.info("monitor: %d predictions between %s and %s", len(window), since, until)
        notes = []
        if window.empty:
            notes.append(
                f"no predictions between {since:%Y-%m-%d %H:%M} and {until:%Y-%m-%d %H:%M} UTC:"
                " nothing was judged"
            )
        with atomic_dir(out_dir) as tmp:
            models = [
                monitor_model(tag, rows, load_reference(tag), params, tmp / DOCS_DIR)
                for tag, rows in window.groupby("model_tag", sort=True)
            ]
            result = MonitorResult(
                until, since, until, store, models, Path(out_dir), params, notes, before
            )
            write_report(tmp, result)
        write_scores(engine, until, score_rows(result))
    finally:
        engine.dispose()
    for tag, rule in result.broken:
        log.warning("monitor: %s broke %s: %s", tag, rule.name, rule.detail)
    return result


def score_rows(result: MonitorResult) -> list[dict[str, Any]]:
    """One drift_scores row per rule and model tag (score None when not judged)."""
    return [
        {
            "model_tag": m.model_tag,
            "name": r.name,
            "score": r.as_dict()["score"],
            "threshold": r.threshold,
            "broken": r.broken,
        }
        for m in result.models
        for r in m.rules
    ]
