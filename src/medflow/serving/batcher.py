"""Merges the model calls of concurrent requests into batches, in the serving worker.

While the network computes a batch, new images queue; when it is free, everything queued goes
as the next batch (up to max_batch_size images). A lone request goes at once. An image that
waited longer than max_latency_ms is not computed: its caller gets `Overloaded` (HTTP 503).
Why not BentoML's adaptive batching: docs/decisions/serving-batching.md.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

Infer = Callable[[np.ndarray], Awaitable[np.ndarray]]


class Overloaded(Exception):
    """A request waited in the batching queue longer than the latency bound."""


@dataclass
class _Waiting:
    images: np.ndarray
    future: asyncio.Future[np.ndarray]
    since: float = field(default_factory=time.monotonic)


class Coalescer:
    """`await coalescer(images)` -> infer(images), with concurrent calls merged on dim 0.

    At most `max_in_flight` batches are out at once (1 for a network in the same process: the
    queue then fills while it computes). A failed batch fails every call in it.
    """

    def __init__(
        self,
        infer: Infer,
        max_batch_size: int,
        max_latency_ms: float,
        max_in_flight: int = 1,
    ) -> None:
        if max_batch_size < 1 or max_in_flight < 1 or max_latency_ms <= 0:
            raise ValueError(
                "max_batch_size and max_in_flight must be >= 1 and max_latency_ms > 0, got"
                f" {max_batch_size}, {max_in_flight} and {max_latency_ms}"
            )
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_latency_ms / 1000
        self.max_in_flight = max_in_flight
        self._queue: deque[_Waiting] = deque()
        self._in_flight = 0

    @property
    def busy(self) -> bool:
        """Something queued or computing (read from other threads too: a hint, not a lock)."""
        return self._in_flight > 0 or bool(self._queue)

    async def __call__(self, images: np.ndarray) -> np.ndarray:
        if len(images) > self.max_batch_size:
            raise ValueError(f"{len(images)} images, above max_batch_size {self.max_batch_size}")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(images, loop.create_future())
        self._queue.append(waiting)
        if self._in_flight < self.max_in_flight:
            self._in_flight += 1
            loop.create_task(self._drain())
        return await waiting.future

    def _take(self) -> list[_Waiting]:
        """The next batch; callers that waited too long (or left) are answered here."""
        taken: list[_Waiting] = []
        size = 0
        now = time.monotonic()
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # the caller was cancelled (client went away)
                self._queue.popleft()
                continue
            waited = now - head.since
            if waited > self.max_wait_s:
                self._queue.popleft()
                head.future.set_exception(
                    Overloaded(
                        f"waited {waited * 1000:.0f} ms for the model, above max_latency_ms"
                        f" {self.max_wait_s * 1000:.0f}"
                    )
                )
                continue
            if taken and size + len(head.images) > self.max_batch_size:
                break
            taken.append(self._queue.popleft())
            size += len(head.images)
        return taken

    async def _drain(self) -> None:
        try:
            while self._queue:
                taken = self._take()
                if not taken:
                    continue
                try:
                    out = await self.infer(np.concatenate([w.images for w in taken]))
                except Exception as exc:  # handed to every caller of the batch
                    for w in taken:
                        if not w.future.done():
                            w.future.set_exception(exc)
                    continue
                except asyncio.CancelledError:  # shutdown: tell the callers, then stop
                    for w in taken:
                        w.future.cancel()
                    raise
                start = 0
                for w in taken:
                    if not w.future.done():  # a caller may have been cancelled (client left)
                        w.future.set_result(out[start : start + len(w.images)])
                    start += len(w.images)
        finally:
            self._in_flight -= 1
