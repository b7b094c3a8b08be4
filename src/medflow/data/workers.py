"""Where ingest shards run: here, or in a local pool of worker processes.

A mapper takes the shard function and the shards and yields results as they finish (in
any order). For a cluster, medflow.orchestration.ingest_dask supplies a mapper that fans the
same shards out through Prefect's Dask task runner.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed

from medflow.data.shard import ShardResult, ShardTask

ShardFn = Callable[[ShardTask], ShardResult]
Mapper = Callable[[ShardFn, Sequence[ShardTask]], Iterator[ShardResult]]


def serial_mapper(fn: ShardFn, tasks: Sequence[ShardTask]) -> Iterator[ShardResult]:
    """Each shard in turn, in this process."""
    for task in tasks:
        yield fn(task)


def local_mapper(workers: int) -> Mapper:
    """A process pool of `workers` processes (1: run in this process, no pool)."""
    if workers <= 1:
        return serial_mapper

    def pool_map(fn: ShardFn, tasks: Sequence[ShardTask]) -> Iterator[ShardResult]:
        if len(tasks) <= 1:
            yield from serial_mapper(fn, tasks)
            return
        # Not fork: the caller may be a Prefect flow with threads holding locks. A fork
        # server is started fresh, imports the ingest code once, and forks each worker from
        # that clean state: workers start without importing pydicom and the Table E.1-1 again.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["medflow.data.shard"])
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context) as pool:
            futures = [pool.submit(fn, task) for task in tasks]
            for future in as_completed(futures):
                yield future.result()

    return pool_map
