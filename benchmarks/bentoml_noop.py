"""A BentoML service that takes a DICOM upload as medflow's /predict does and does nothing.

benchmarks/serve.py serves it beside the real Bento to show BentoML's own share of a request
(HTTP parsing, the upload written to a temporary file, its middlewares: tracing, metrics,
access log, timeout): the part of medflow's latency no service code can remove.
"""

from __future__ import annotations

from pathlib import Path

import bentoml


@bentoml.service(name="noop", workers=1, resources={"cpu": "1"})
class Noop:
    @bentoml.api
    async def predict(self, file: Path) -> dict:
        return {"bytes": file.stat().st_size}
