"""Prefect entry point: the training, watcher and monitor deployments
(medflow.orchestration.deployments).

Serve them (needs PREFECT_API_URL):  medflow orchestrate serve --root .
"""

from medflow.orchestration.deployments import register_notifications, serve_all

__all__ = ["register_notifications", "serve_all"]
