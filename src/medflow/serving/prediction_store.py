"""The prediction log's database: tables, engine, keyed image hash, and the reads and writes.

SQLAlchemy Core on SQLite (default; WAL mode, shared by the Bento's workers and the monitor)
or PostgreSQL. Predictions are inserted only; retention deletes old ones. Nothing here logs
a value of a row: SQLAlchemy's own error messages quote the parameters, so callers log the
exception's type only. medflow.serving.prediction_log re-exports the public names.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

if TYPE_CHECKING:
    import pandas as pd

KEY_ENV = "MEDFLOW_MONITOR_KEY"
KEY_META = "image_hash_key"
SQLITE_BUSY_TIMEOUT_S = 30

metadata = sa.MetaData()

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("prediction_id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("model_tag", sa.Text, nullable=False),
    sa.Column("image_hash", sa.String(64), nullable=False, index=True),
    sa.Column("input_format", sa.Text, nullable=False),
    sa.Column("modality", sa.Text, nullable=False),
    sa.Column("manufacturer", sa.Text, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("columns", sa.Integer, nullable=False),
    sa.Column("pixel_mean", sa.Float, nullable=False),
    sa.Column("pixel_std", sa.Float, nullable=False),
    sa.Column("probabilities", sa.Text, nullable=False),  # JSON list, in class order
    sa.Column("class_names", sa.Text, nullable=False),  # JSON list
    sa.Column("label_index", sa.Integer, nullable=False),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("threshold", sa.Float, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("route", sa.Text, nullable=False),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column(
        "prediction_id",
        sa.String(64),
        sa.ForeignKey("predictions.prediction_id"),
        primary_key=True,
    ),
    sa.Column("label_index", sa.Integer, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)

drift_scores = sa.Table(
    "drift_scores",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("model_tag", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("threshold", sa.Float, nullable=True),
    sa.Column("broken", sa.Boolean, nullable=False),
)

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

SCORE_KEYS = ("model_tag", "name", "score", "threshold", "broken")


@dataclass(frozen=True, slots=True)
class PredictionRow:
    """One row of `predictions` as the service hands it over (JSON encoding is the writer's).

    `image_hash` is None only while the hash key is not known yet (database down at start and
    no $MEDFLOW_MONITOR_KEY); then `hash_source` holds the message, kept in memory until the
    writer can hash it, never written.
    """

    prediction_id: str
    created_at: datetime
    model_tag: str
    image_hash: str | None
    input_format: str
    modality: str
    manufacturer: str
    rows: int
    columns: int
    pixel_mean: float
    pixel_std: float
    probabilities: list[float]
    class_names: list[str]
    label_index: int
    label: str
    threshold: float | None
    latency_ms: float
    route: str
    hash_source: str | None = None


def engine_for(url: str, root: Path | None = None) -> sa.Engine:
    """The engine of the prediction log at `url` (database_url), its tables created when
    missing; SQLite in WAL mode with a busy timeout, as several processes share the file.

    Raises:
        sqlalchemy.exc.ArgumentError: a URL SQLAlchemy cannot parse.
        sqlalchemy.exc.SQLAlchemyError, OSError: the database cannot be reached or created.
    """
    parsed = database_url(url, root)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = sa.create_engine(parsed, pool_pre_ping=True)
    try:
        metadata.create_all(engine)
    except sa.exc.SQLAlchemyError:
        # Several workers create the tables at once: one wins, the others see them next time.
        time.sleep(0.2)
        metadata.create_all(engine)
    return engine


def database_url(url: str, root: Path | None = None) -> sa.URL:
    """The SQLAlchemy URL of package.serve.prediction_log_url.

    `sqlite:///<path>`: a relative path is resolved against `root` (default: the current
    directory). `postgresql://user@host:5432/db`: run through psycopg 3 (the password from
    $PGPASSWORD or ~/.pgpass, never in the URL).
    """
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    parsed = sa.make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:"):
        path = Path(database).expanduser()
        if not path.is_absolute():
            path = (root or Path.cwd()) / path
        parsed = parsed.set(database=str(path))
    return parsed


def _sqlite_pragmas(connection: Any, _record: object) -> None:
    # WAL: readers (the monitor, /feedback) do not block the workers' inserts and vice versa
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.close()


def safe_url(engine: sa.Engine) -> str:
    """The engine's URL without its password, for log lines."""
    return engine.url.render_as_string(hide_password=True)


def hash_key(engine: sa.Engine, environ: Mapping[str, str] = os.environ) -> bytes:
    """The image hash key: $MEDFLOW_MONITOR_KEY, else the random key in the `meta` table
    (created by the first worker that asks, then shared by all and kept across restarts)."""
    key = environ.get(KEY_ENV, "")
    if key:
        return key.encode()
    with engine.begin() as conn:
        conn.execute(
            _insert_ignore(engine, meta, ["key"]),
            {"key": KEY_META, "value": secrets.token_hex(32)},
        )
    with engine.connect() as conn:
        stored = conn.execute(sa.select(meta.c.value).where(meta.c.key == KEY_META)).scalar_one()
    return bytes.fromhex(stored)


def hash_message(uid: str | None, data: bytes) -> str:
    """What an image's hash is computed over: its SOP Instance UID, else the sha256 (hex) of
    the uploaded bytes (PNG/JPEG, or a DICOM file without a UID)."""
    return uid or hashlib.sha256(data).hexdigest()


def image_hash(key: bytes, message: str) -> str:
    """HMAC-SHA256 (hex) of `message` under `key`: the stored and returned image hash."""
    return hmac.digest(key, message.encode(), "sha256").hex()


def _insert_ignore(engine: sa.Engine, table: sa.Table, keys: list[str]) -> Any:
    """INSERT ... ON CONFLICT (keys) DO NOTHING, in the engine's dialect."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=keys)


def row_params(row: PredictionRow, key: bytes | None) -> dict[str, Any]:
    """The INSERT parameters of one row (its hash made now if the service could not)."""
    digest = row.image_hash
    if digest is None:
        if key is None or row.hash_source is None:
            raise ValueError("a prediction row without image hash and without a key to make it")
        digest = image_hash(key, row.hash_source)
    return {
        "prediction_id": row.prediction_id,
        "created_at": _utc(row.created_at),
        "model_tag": row.model_tag,
        "image_hash": digest,
        "input_format": row.input_format,
        "modality": row.modality,
        "manufacturer": row.manufacturer,
        "rows": row.rows,
        "columns": row.columns,
        "pixel_mean": row.pixel_mean,
        "pixel_std": row.pixel_std,
        "probabilities": json.dumps(row.probabilities),
        "class_names": json.dumps(row.class_names),
        "label_index": row.label_index,
        "label": row.label,
        "threshold": row.threshold,
        "latency_ms": row.latency_ms,
        "route": row.route,
    }


def insert_predictions(engine: sa.Engine, params: list[dict[str, Any]]) -> None:
    """Insert rows (row_params) in one transaction."""
    with engine.begin() as conn:
        conn.execute(predictions.insert(), params)


def purge(engine: sa.Engine, before: datetime) -> int:
    """Delete the predictions made before `before`, and their feedback; returns how many."""
    too_old = predictions.c.created_at < _utc(before)
    old = sa.select(predictions.c.prediction_id).where(too_old)
    with engine.begin() as conn:
        conn.execute(feedback.delete().where(feedback.c.prediction_id.in_(old)))
        return conn.execute(predictions.delete().where(too_old)).rowcount


@dataclass(frozen=True)
class Found:
    """A logged prediction that feedback names."""

    prediction_id: str
    model_tag: str


def find_prediction(
    engine: sa.Engine, prediction_id: str | None = None, image_hash: str | None = None
) -> Found | None:
    """The prediction with this id, or the latest of the image with this hash; None if none."""
    query = sa.select(predictions.c.prediction_id, predictions.c.model_tag)
    if prediction_id is not None:
        query = query.where(predictions.c.prediction_id == prediction_id)
    elif image_hash is not None:
        query = query.where(predictions.c.image_hash == image_hash)
    else:
        raise ValueError("give prediction_id or image_hash")
    query = query.order_by(predictions.c.created_at.desc()).limit(1)
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else Found(row.prediction_id, row.model_tag)


def insert_feedback(engine: sa.Engine, prediction_id: str, label_index: int) -> tuple[bool, int]:
    """Record the ground truth of a prediction unless it has one already. Returns whether
    this call recorded it, and the label index on record (on a repeat: the first one given)."""
    # RETURNING, not rowcount: psycopg's rowcount of an INSERT reaches SQLAlchemy as -1
    insert = _insert_ignore(engine, feedback, ["prediction_id"]).returning(feedback.c.label_index)
    with engine.begin() as conn:
        inserted = conn.execute(
            insert,
            {
                "prediction_id": prediction_id,
                "label_index": label_index,
                "received_at": datetime.now(UTC),
            },
        ).first()
    if inserted is not None:
        return True, label_index
    with engine.connect() as conn:
        recorded = conn.execute(
            sa.select(feedback.c.label_index).where(feedback.c.prediction_id == prediction_id)
        ).scalar_one()
    return False, recorded


def read_window(
    engine: sa.Engine, since: datetime, until: datetime, model_tag: str | None = None
) -> pd.DataFrame:
    """The predictions made in (since, until], oldest first, with their feedback.

    Columns: those of the `predictions` table (created_at as UTC timestamps; probabilities and
    class_names as lists) plus `feedback_label_index` (NaN where no feedback came).
    """
    import pandas as pd  # the monitor's; the Bento never calls this

    query = (
        sa.select(predictions, feedback.c.label_index.label("feedback_label_index"))
        .select_from(predictions.outerjoin(feedback))
        .where(predictions.c.created_at > _utc(since), predictions.c.created_at <= _utc(until))
        .order_by(predictions.c.created_at, predictions.c.prediction_id)
    )
    if model_tag is not None:
        query = query.where(predictions.c.model_tag == model_tag)
    with engine.connect() as conn:
        result = conn.execute(query)
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    for column in ("probabilities", "class_names"):
        frame[column] = [json.loads(v) for v in frame[column]]
    frame["feedback_label_index"] = pd.to_numeric(frame["feedback_label_index"]).astype(float)
    return frame


def write_scores(engine: sa.Engine, run_at: datetime, rows: list[dict[str, Any]]) -> None:
    """A monitor run's scores, one row per rule (keys model_tag, name, score, threshold,
    broken), all stamped `run_at`; /metrics shows each model tag's latest run."""
    params = []
    for row in rows:
        missing = set(SCORE_KEYS) - set(row)
        if missing:
            raise ValueError(f"a drift score row lacks {sorted(missing)}; expected {SCORE_KEYS}")
        params.append({k: row[k] for k in SCORE_KEYS} | {"run_at": _utc(run_at)})
    if params:
        with engine.begin() as conn:
            conn.execute(drift_scores.insert(), params)


def latest_scores(engine: sa.Engine) -> list[dict[str, Any]]:
    """The rows of each model tag's latest monitor run (keys as write_scores takes them)."""
    last = (
        sa.select(drift_scores.c.model_tag, sa.func.max(drift_scores.c.run_at).label("run_at"))
        .group_by(drift_scores.c.model_tag)
        .subquery()
    )
    same_run = sa.and_(
        drift_scores.c.model_tag == last.c.model_tag, drift_scores.c.run_at == last.c.run_at
    )
    query = sa.select(*(drift_scores.c[k] for k in SCORE_KEYS)).join(last, same_run)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def _utc(moment: datetime) -> datetime:
    """An aware UTC datetime (naive ones are taken as UTC): SQLite stores the wall time only,
    so every stored and compared moment must be in the same zone."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
