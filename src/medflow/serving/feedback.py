"""POST /feedback: the ground truth of a past prediction, into the prediction log.

The body names the prediction (`prediction_id`, or `image_hash` for that image's latest
prediction) and the label (a class name or its index). A repeat for the same prediction is
answered but not counted. Nothing here logs the id, the hash or the label.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, Field

from medflow.serving.errors import ServeError
from medflow.serving.prediction_log import Feedback, LogUnavailable, PredictionLog

MAX_ID_CHARS = 128
FEEDBACK_THREADS = 2


@functools.cache
def _executor() -> ThreadPoolExecutor:
    """Feedback's own threads: a lookup may wait 2 s for another worker's write, and must not
    hold the threads that prepare predictions (asyncio's default executor)."""
    return ThreadPoolExecutor(FEEDBACK_THREADS, thread_name_prefix="feedback")


class FeedbackAnswer(BaseModel):
    """What was recorded: the prediction, its label on record, and whether this repeated an
    earlier feedback (then the first one's label stands and nothing was counted)."""

    prediction_id: str
    label: str
    duplicate: bool = Field(description="true: this prediction had feedback already")


def label_index(label: object, class_names: Sequence[str]) -> int:
    """The class index `label` names: a class name, or an index (a number or its digits).

    Raises:
        ServeError: 422 `unknown_label`, naming the classes.
    """
    if isinstance(label, str) and label in class_names:
        return class_names.index(label)
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label.strip())
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(class_names):
        return label
    classes = ", ".join(f"{i}={name}" for i, name in enumerate(class_names))
    raise ServeError(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "unknown_label",
        f"'label' must be a class name or index of this model ({classes})",
    )


def target(values: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(prediction_id, image_hash) of the body: exactly one of them, a non-empty string.

    Raises:
        ServeError: 400 `bad_field` naming the problem.
    """
    given = {k: values.get(k) for k in ("prediction_id", "image_hash") if values.get(k) is not None}
    if len(given) != 1:
        raise ServeError(
            HTTPStatus.BAD_REQUEST,
            "bad_field",
            "send exactly one of 'prediction_id' (from a prediction's answer) or 'image_hash'"
            f" (its latest prediction); got {' and '.join(sorted(given)) or 'neither'}",
        )
    ((name, value),) = given.items()
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise ServeError(
            HTTPStatus.BAD_REQUEST,
            "bad_field",
            f"{name!r} must be a string of 1 to {MAX_ID_CHARS} characters, as a prediction's"
            " answer gives it",
        )
    return (value, None) if name == "prediction_id" else (None, value)


async def give_feedback(
    log: PredictionLog | None, values: Mapping[str, Any], class_names: Sequence[str]
) -> tuple[FeedbackAnswer, Feedback]:
    """Check a /feedback body and record it (the database work in a feedback thread).

    Raises:
        ServeError: 409 `prediction_log_off`, 400 `bad_field`, 422 `unknown_label`,
            404 `unknown_prediction`, 503 `prediction_log_unavailable`.
    """
    if log is None:
        raise ServeError(
            HTTPStatus.CONFLICT,
            "prediction_log_off",
            "this server does not log predictions (package.serve.prediction_log is false),"
            " so there is nothing to give feedback on",
        )
    prediction_id, digest = target(values)
    index = label_index(values["label"], class_names)
    try:
        work = functools.partial(
            log.add_feedback, index, prediction_id=prediction_id, image_hash=digest
        )
        recorded = await asyncio.get_running_loop().run_in_executor(_executor(), work)
    except LogUnavailable as exc:
        raise ServeError(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "prediction_log_unavailable",
            f"the prediction log's database cannot be reached ({exc}); retry later",
        ) from None
    if recorded is None:
        raise ServeError(
            HTTPStatus.NOT_FOUND,
            "unknown_prediction",
            "no logged prediction has this "
            + ("prediction_id" if prediction_id is not None else "image_hash")
            + " (a mistyped value, another server's prediction, or one older than"
            " package.serve.prediction_log_retention_days)",
        )
    answer = FeedbackAnswer(
        prediction_id=recorded.prediction_id,
        label=class_names[recorded.label_index],
        duplicate=recorded.duplicate,
    )
    return answer, recorded
