"""The ingest stage on a Dask cluster, through Prefect's Dask task runner (prefect-dask).

The same shards as a local run, each a Prefect task on a Dask worker, merged by the same
run_ingest. With data.source pacs the pull's retrieval shards run the same way first (the
pull stage's function, with this mapper). Task inputs and results stay in memory
(persist_result=False, no cache): they hold the original identifiers. Cluster set-up and
commands: docs/ingest.md; the PACS credentials must be in the Dask workers' environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect_dask import DaskTaskRunner

from medflow.config import load_params
from medflow.data.deid import resolve_deid_key
from medflow.data.ingest import IngestConfig, run_ingest
from medflow.data.shard import ShardResult, ShardTask, ingest_shard
from medflow.data.workers import Mapper
from medflow.pacs.retrieve import RetrieveResult, RetrieveShard, retrieve_shard
from medflow.stages.layout import Layout
from medflow.stages.pull import pull

T = TypeVar("T")
R = TypeVar("R")


@task(name="ingest-shard", cache_policy=NO_CACHE, persist_result=False, log_prints=False)
def ingest_shard_task(shard: ShardTask) -> ShardResult:
    """One shard, as a Prefect task on a Dask worker (its result is never persisted)."""
    return ingest_shard(shard)


@task(name="pull-shard", cache_policy=NO_CACHE, persist_result=False, log_prints=False)
def pull_shard_task(shard: RetrieveShard) -> RetrieveResult:
    """One shard of the PACS retrieval on a Dask worker (credentials from its environment)."""
    return retrieve_shard(shard)


def prefect_mapper(shard_task: Any) -> Mapper:
    """A mapper that runs each shard as `shard_task` on the flow's task runner (the mapped
    function is that task's own); results as they finish."""

    def mapper(_: Callable[[T], R], tasks: Sequence[T], /) -> Iterator[R]:
        futures = [shard_task.submit(t) for t in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:  # after a failure: shards not started are not started
                _cancel(future)

    return mapper


def _cancel(future: Any) -> None:
    """Cancel a Prefect future's Dask future (PrefectDaskFuture has no cancel of its own)."""
    wrapped = getattr(future, "wrapped_future", None)
    cancel = getattr(wrapped, "cancel", None) or getattr(future, "cancel", None)
    if cancel is not None:
        cancel()


@flow(name="medflow-ingest-dask")
def ingest_dask(
    root: str = ".",
    source: str | None = None,
    out: str | None = None,
    params_file: str | None = None,
) -> dict[str, Any]:
    """Ingest data.source (or `source`) into data/ingested (or `out`) with shards on Dask.

    Parameters are paths only: a flow run's parameters are stored by the Prefect server, so
    the key is read here from the environment (MEDFLOW_DEID_KEY / MEDFLOW_DEID_KEY_FILE).
    """
    layout = Layout(Path(root).resolve())
    params = load_params(Path(params_file) if params_file else layout.params)
    src = Path(source) if source else params.data.resolve_source(layout.data)
    pulled = None
    if params.data.is_pacs and not source:
        pulled = pull(params, src, layout.pull_record, mapper=prefect_mapper(pull_shard_task))
        get_run_logger().info(
            "pulled %d instance(s) on Dask (%d removed); %d held",
            pulled.retrieved,
            pulled.removed,
            pulled.record.instances,
        )
    dst = Path(out) if out else layout.ingested
    key = resolve_deid_key(
        os.environ,
        synthetic=params.data.is_synthetic,
        allow_demo=params.deid.allow_demo_key_for_synthetic,
    )
    mapper = prefect_mapper(ingest_shard_task)
    result = run_ingest(IngestConfig.from_params(params), src, dst, key, mapper=mapper)
    get_run_logger().info(
        "ingested %d images from %d files on Dask; outcomes %s",
        result.n_images,
        result.n_files,
        result.outcomes,
    )
    return {
        "n_images": result.n_images,
        "n_files": result.n_files,
        "outcomes": result.outcomes,
        "data_hash": result.data_hash,
        "pulled": None if pulled is None else pulled.retrieved,
    }


def dask_runner(n_workers: int = 2, address: str | None = None) -> DaskTaskRunner:
    """A runner for a running cluster (address) or a temporary local one of n_workers."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True}
    )


def main() -> None:
    """`python -m medflow.orchestration.ingest_dask`: the ingest stage on a Dask cluster."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".", help="project root (params.yaml, data/)")
    parser.add_argument("--source", help="source folder (default: data.source)")
    parser.add_argument("--out", help="output folder (default: data/ingested)")
    parser.add_argument("--workers", type=int, default=2, help="local cluster size")
    parser.add_argument("--address", help="scheduler address of a running Dask cluster")
    args = parser.parse_args()
    runner = dask_runner(args.workers, args.address)
    summary = ingest_dask.with_options(task_runner=runner)(
        root=args.root, source=args.source, out=args.out
    )
    print(summary)


if __name__ == "__main__":
    main()
