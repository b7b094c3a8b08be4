"""The Prefect flow `medflow-pacs-infer`: one inference pass on new PACS images (run_infer).

Its only parameter is the project root; the pass's counts (no identifiers) are its result and
the markdown artifact `pacs-inference`. `medflow infer` runs the same pass without Prefect;
the deployment (medflow.orchestration.deployments) runs it on pacs.infer.cron and on every
data-change event.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from medflow.config import load_params
from medflow.data.deid import resolve_deid_key
from medflow.pacs.infer import InferResult, run_infer
from medflow.stages.layout import Layout

LEDGER = Path(".medflow") / "pacs_infer.sqlite"
ARTIFACT = "pacs-inference"


def infer_pass(params_file: Path, bento_url: str | None = None) -> InferResult:
    """run_infer with a project's params (its folder holds the ledger, .medflow/), the
    de-identification key as the ledger's key, and the Bento at bento_url if given."""
    pacs = load_params(params_file).pacs
    if bento_url:
        pacs = pacs.model_copy(
            update={"infer": pacs.infer.model_copy(update={"bento_url": bento_url})}
        )
    key = resolve_deid_key(os.environ, synthetic=False, allow_demo=False)
    return run_infer(pacs, params_file.resolve().parent / LEDGER, key)


# UIDs pass through the task's code: nothing of it is cached or persisted
@task(name="pacs-infer-pass", cache_policy=NO_CACHE, persist_result=False)
def _pass(root: str) -> dict[str, Any]:
    return infer_pass(Layout(Path(root)).params).summary()


@flow(name="medflow-pacs-infer", persist_result=False)
def pacs_infer(root: str = ".") -> dict[str, Any]:
    """Infer on the PACS's new images with the served champion; store the results there."""
    summary = _pass(str(Path(root).resolve()))
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items())
    create_markdown_artifact(
        key=ARTIFACT,
        markdown=f"## PACS inference\n\n| | |\n|---|---|\n{rows}\n",
        description="counts of one inference pass (no identifiers)",
    )
    get_run_logger().info(
        "%d results stored, %d images already done", summary["stored"], summary["already done"]
    )
    return summary
