"""Errors that stop a stage on purpose. The CLI turns them into a message and an exit code
(1; 4 for GateFailed: medflow.cli.common.ExitCode); in the Prefect flow they fail the task,
and so the flow run, with the same message."""

from __future__ import annotations


class StageFailed(RuntimeError):
    """A stage ran correctly and decided the pipeline must stop (the message says why)."""


class ValidationFailed(StageFailed):
    """The dataset failed its Great Expectations suite."""


class GateFailed(StageFailed):
    """The model is below the evaluation gate's thresholds."""


class IngestFailed(StageFailed):
    """Ingest could not produce a usable, de-identified dataset."""


class PacsError(StageFailed):
    """The PACS (a DICOMweb server) refused a request or stayed unreachable; the message names
    the server (never a study, a patient or a credential)."""
