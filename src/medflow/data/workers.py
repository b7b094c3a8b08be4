"""Where shards of work run: here, or in a local pool of worker processes.

A mapper takes a shard function and the shards and yields results as they finish (in any
order). The ingest (medflow.data.shard) and the PACS pull (medflow.pacs.retrieve) both run
their shards through one; for a cluster, medflow.orchestration.ingest_dask supplies a mapper
that fans the same shards out through Prefect's Dask task runner.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Protocol, TypeVar

from medflow.data.shard import ShardResult, ShardTask

T = TypeVar("T")
R = TypeVar("R")

ShardFn = Callable[[ShardTask], ShardResult]
"""The ingest's shard function (medflow.data.shard.ingest_shard)."""


class Mapper(Protocol):
    """Runs `fn` on every task; yields the results as they finish, in any order."""

    def __call__(self, fn: Callable[[T], R], tasks: Sequence[T], /) -> Iterator[R]: ...


def serial_mapper(fn: Callable[[T], R], tasks: Sequence[T], /) -> Iterator[R]:
    """Each shard in turn, in this process."""
    for task in tasks:
        yield fn(task)


def local_mapper(workers: int, preload: tuple[str, ...] = ("medflow.data.shard",)) -> Mapper:
    """A process pool of `workers` processes (1: run in this process, no pool).

    `preload`: modules the fork server imports once, so each worker starts with them.
    """
    if workers <= 1:
        return serial_mapper

    def pool_map(fn: Callable[[T], R], tasks: Sequence[T], /) -> Iterator[R]:
        if len(tasks) <= 1:
            yield from serial_mapper(fn, tasks)
            return
        # Not fork: the caller may be a Prefect flow with threads holding locks. A fork
        # server is started fresh, imports the shard code once, and forks each worker from
        # that clean state: workers start without importing pydicom and the Table E.1-1 again.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(preload))
        pool = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context)
        try:
            futures = [pool.submit(fn, task) for task in tasks]
            for future in as_completed(futures):
                yield future.result()
        finally:
            # a failed shard (or a caller that stops reading) cancels the shards not started:
            # with a PACS down, each of them would only wait out its retries
            pool.shutdown(wait=True, cancel_futures=True)

    return pool_map
