"""Prefect entry point: the data watcher flow (code: medflow.orchestration.watch)."""

from medflow.orchestration.watch import watch_data

__all__ = ["watch_data"]
