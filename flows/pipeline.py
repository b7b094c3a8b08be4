"""Prefect entry point: the medflow pipeline flow (code: medflow.orchestration.pipeline).

Run it (ephemeral Prefect, no server):  medflow flow [--root .]   or   python -m flows.pipeline
"""

import sys

from medflow.orchestration.pipeline import main, pipeline

__all__ = ["main", "pipeline"]

if __name__ == "__main__":
    sys.exit(main())
