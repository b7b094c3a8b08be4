"""Prefect entry point: the monitor flow (code: medflow.orchestration.monitor).

Run it once:  medflow monitor   (its deployment: medflow orchestrate serve)
"""

from medflow.orchestration.monitor import monitor_flow

__all__ = ["monitor_flow"]
