"""medflow.serving.engine: the fast path never waits for the network, the queue computes the
same probabilities."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import torch

from medflow.models.net import build_network
from medflow.serving.engine import Engine


def _engine() -> Engine:
    torch.manual_seed(0)
    net = build_network("smallcnn", 1, 2, 4, 0.0)
    return Engine(net, torch.device("cpu"), max_batch_size=4, max_latency_ms=5000)


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 32, 32), dtype=np.float32)


def test_try_now_computes_when_free_and_matches_the_queue() -> None:
    engine = _engine()
    images = _images(3)
    now = engine.try_now(images)
    assert now is not None and now.shape == (3, 2)
    np.testing.assert_allclose(now.sum(axis=1), 1.0, rtol=1e-5)
    queued = asyncio.run(engine(images))
    np.testing.assert_allclose(now, queued, rtol=1e-5, atol=1e-6)


def test_try_now_declines_instead_of_waiting_while_the_network_is_taken() -> None:
    # It may run on the event loop: waiting there for a batch would stall every request.
    engine = _engine()
    results: list[np.ndarray | None] = []
    caller = threading.Thread(target=lambda: results.append(engine.try_now(_images(1))))
    with engine._lock:  # a batch computing on the inference thread
        caller.start()
        caller.join(timeout=5)
        waited = caller.is_alive()
    caller.join()
    assert not waited, "try_now waited for the network instead of declining"
    assert results == [None]
    assert engine.try_now(_images(1)) is not None  # and free again after


def test_try_now_declines_while_requests_queue() -> None:
    engine = _engine()

    async def main() -> tuple[np.ndarray | None, np.ndarray]:
        queued = asyncio.ensure_future(engine(_images(2)))
        await asyncio.sleep(0)  # the queue takes it: busy until the batch is back
        declined = engine.try_now(_images(1))
        return declined, await queued

    declined, queued = asyncio.run(main())
    assert declined is None
    assert queued.shape == (2, 2)
