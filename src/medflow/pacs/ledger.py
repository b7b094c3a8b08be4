"""Which PACS images each model's result was already stored for (a small SQLite file).

Rows are keyed by (keyed HMAC of the SOP Instance UID, model tag): the file names no image. A
row is written only once the PACS has accepted the result (or once the model has refused the
image for good), so a pass that stops half-way repeats only what was not stored.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

STORED = "stored"
REFUSED = "refused"  # the served model refuses the image (4xx); it would refuse it again

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    image TEXT NOT NULL,
    model TEXT NOT NULL,
    outcome TEXT NOT NULL,
    kind TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (image, model)
)
"""


class Ledger:
    """The results recorded per (image, model); safe to use from several threads."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._key = key
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        with self._lock, self._db:
            self._db.execute(_SCHEMA)

    def token(self, sop_uid: str) -> str:
        """The image's key in the ledger: a keyed HMAC, not reversible without the key."""
        return hmac.new(
            self._key, f"medflow/pacs-infer/{sop_uid}".encode(), hashlib.sha256
        ).hexdigest()[:32]

    def done(self, model_tag: str) -> set[str]:
        """Tokens of the images `model_tag` has a recorded outcome for."""
        with self._lock:
            rows = self._db.execute("SELECT image FROM results WHERE model = ?", (model_tag,))
            return {image for (image,) in rows}

    def has(self, sop_uid: str, model_tag: str) -> bool:
        return self.token(sop_uid) in self.done(model_tag)

    def record(self, sop_uid: str, model_tag: str, outcome: str, kind: str) -> None:
        """Record the outcome (STORED or REFUSED) and what it was (SR, SEG, or the refusal's
        code); committed at once."""
        at = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                (self.token(sop_uid), model_tag, outcome, kind, at),
            )

    def counts(self, model_tag: str) -> dict[str, int]:
        """Recorded outcomes of one model, by outcome."""
        with self._lock:
            rows = self._db.execute(
                "SELECT outcome, COUNT(*) FROM results WHERE model = ? GROUP BY outcome",
                (model_tag,),
            )
            return dict(rows.fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
