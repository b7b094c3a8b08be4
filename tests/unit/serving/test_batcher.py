"""medflow.serving.batcher: concurrent calls share batches, each caller gets its own rows."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from medflow.serving.batcher import Coalescer, Overloaded


def _run(coro):
    return asyncio.run(coro)


def test_lone_call_goes_out_at_once_and_concurrent_calls_are_merged() -> None:
    batches: list[int] = []

    async def infer(x: np.ndarray) -> np.ndarray:
        batches.append(len(x))
        await asyncio.sleep(0.01)
        return x[:, :1] * 10  # row i -> 10 * its first value: shows whose row is whose

    async def main() -> list[np.ndarray]:
        c = Coalescer(infer, max_batch_size=4, max_latency_ms=5000)
        first = await c(np.array([[1.0, 0.0]]))
        rest = await asyncio.gather(*(c(np.array([[float(i), 0.0]])) for i in range(2, 8)))
        return [first, *rest]

    outs = _run(main())
    assert [o.tolist() for o in outs] == [[[10.0 * i]] for i in range(1, 8)]
    # the lone call alone; then the first waiter alone (in flight), the others merged up to 4
    assert batches[0] == 1
    assert max(batches) == 4
    assert sum(batches) == 7


def test_multi_image_calls_keep_their_rows_and_the_size_limit() -> None:
    async def infer(x: np.ndarray) -> np.ndarray:
        await asyncio.sleep(0)
        return x.copy()

    async def main():
        c = Coalescer(infer, max_batch_size=3, max_latency_ms=5000)
        a, b = await asyncio.gather(c(np.arange(2.0)[:, None]), c(np.arange(2.0, 5.0)[:, None]))
        with pytest.raises(ValueError, match="above max_batch_size 3"):
            await c(np.zeros((4, 1)))
        return a, b

    a, b = _run(main())
    assert a.ravel().tolist() == [0.0, 1.0]
    assert b.ravel().tolist() == [2.0, 3.0, 4.0]


def test_a_failed_batch_fails_its_callers_and_the_next_batch_still_runs() -> None:
    calls = 0

    async def infer(x: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise RuntimeError("model down")
        return x

    async def main():
        c = Coalescer(infer, max_batch_size=8, max_latency_ms=5000)
        first = asyncio.gather(c(np.ones((1, 1))), return_exceptions=True)
        await asyncio.sleep(0)
        results = await asyncio.gather(first, c(np.full((1, 1), 2.0)))
        return results

    (first,), second = _run(main())
    assert isinstance(first, RuntimeError)
    assert second.tolist() == [[2.0]]


def test_calls_that_waited_beyond_max_latency_are_refused_and_the_rest_computed() -> None:
    batches: list[int] = []

    async def infer(x: np.ndarray) -> np.ndarray:
        batches.append(len(x))
        await asyncio.sleep(0.3)  # a slow model: the queue waits behind the first batch
        return x

    async def main():
        c = Coalescer(infer, max_batch_size=8, max_latency_ms=100)
        first = asyncio.ensure_future(c(np.ones((1, 1))))
        await asyncio.sleep(0.01)  # the first call is in flight
        late = asyncio.gather(*(c(np.full((1, 1), 2.0)) for _ in range(3)), return_exceptions=True)
        late_results = await late
        after = await c(np.full((1, 1), 3.0))  # the queue is empty again: no wait, computed
        return await first, late_results, after

    first, late, after = _run(main())
    assert first.tolist() == [[1.0]]
    assert all(isinstance(r, Overloaded) for r in late), late
    assert "above max_latency_ms 100" in str(late[0])
    assert after.tolist() == [[3.0]]
    assert batches == [1, 1]  # the three late calls never reached the model


def test_bad_settings_are_refused() -> None:
    async def infer(x: np.ndarray) -> np.ndarray:
        return x

    for kwargs in ({"max_batch_size": 0, "max_latency_ms": 10}, {"max_latency_ms": 0}):
        kwargs = {"max_batch_size": 1, **kwargs}
        with pytest.raises(ValueError, match="max_latency_ms"):
            Coalescer(infer, **kwargs)
