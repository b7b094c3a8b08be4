"""What every medflow command shares: logging, and expected failures as exit codes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from enum import IntEnum
from functools import wraps
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


class ExitCode(IntEnum):
    """The exit codes of `medflow` (README.md, "Exit codes", lists them; a test reads it)."""

    OK = 0
    FAILED = 1  # a stage stopped on purpose or on bad input (the message says why)
    USAGE = 2  # wrong command-line usage (click's own code)
    CONFIG = 3  # params.yaml missing, unreadable or invalid
    GATE_REFUSED = 4  # the evaluation gate refused the model: nothing is packaged
    DRIFT = 5  # `medflow monitor`: a monitoring rule broke (drift or a performance drop)


def setup_logging() -> None:
    """Rich log lines at $MEDFLOW_LOG_LEVEL (default INFO); chatty libraries at WARNING."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=os.environ.get("MEDFLOW_LOG_LEVEL", "INFO"),
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(show_path=False, markup=False)],
    )
    for noisy in (
        "great_expectations",
        "bentoml",
        "pytorch_lightning",
        "lightning_fabric",
        "httpx",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def exit_code(exc: BaseException) -> ExitCode | None:
    """The exit code of an expected failure; None for a bug (let it raise)."""
    from medflow.config import ConfigError
    from medflow.errors import GateFailed, StageFailed
    from medflow.imaging.dicom import DicomError

    if isinstance(exc, ConfigError):
        return ExitCode.CONFIG
    if isinstance(exc, GateFailed):
        return ExitCode.GATE_REFUSED
    if isinstance(exc, StageFailed | DicomError | FileNotFoundError | ValueError):
        return ExitCode.FAILED
    return None


def command(name: str, func: F) -> F:
    """Wrap a command: set up logging; an expected failure becomes one red line and its code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging()
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            code = exit_code(exc)
            if code is None:
                raise
            typer.secho(f"medflow {name}: {type(exc).__name__}: {exc}", fg="red", err=True)
            raise typer.Exit(code=int(code)) from None

    return wrapper  # type: ignore[return-value]
