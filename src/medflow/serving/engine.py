"""The network of one serving worker: probabilities, one forward pass at a time.

Classification: softmax over the classes (n, classes); segmentation: the sigmoid of each
segment's logits (n, segments, size, size).

Two ways in, under one lock so that passes never fight over the cores: `try_now` runs the
pass on the calling thread when nothing is queued or computing (why:
docs/decisions/serving-fast-path.md); `await engine(images)` joins the batching queue.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from medflow.serving.batcher import Coalescer


def probabilities(
    net: nn.Module, images: np.ndarray, device: torch.device, activation: str = "softmax"
) -> np.ndarray:
    """Probabilities of preprocessed images (n, channels, size, size): with "softmax", class
    probabilities (n, classes); with "sigmoid", each output's own (a U-Net's (n, segments,
    size, size)).

    The network is expected in channels_last, as `Engine` keeps it and as training runs it
    (why: docs/decisions/channels-last.md).
    """
    x = torch.as_tensor(images, dtype=torch.float32, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        logits = net(x).float()
        out = torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=1)
        return out.cpu().numpy()


class Engine:
    """The worker's copy of the network, its lock, its inference thread and batching queue."""

    def __init__(
        self,
        net: nn.Module,
        device: torch.device,
        max_batch_size: int,
        max_latency_ms: float,
        activation: str = "softmax",
    ) -> None:
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
        self.device = device
        self.activation = activation
        self.net = net.eval().to(device, memory_format=torch.channels_last)
        self._lock = threading.Lock()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="medflow-infer")
        self._queue = Coalescer(self._forward_async, max_batch_size, max_latency_ms)

    def forward(self, images: np.ndarray) -> np.ndarray:
        """The probabilities of `images`, waiting for the network if it is busy."""
        with self._lock:
            return probabilities(self.net, images, self.device, self.activation)

    def try_now(self, images: np.ndarray) -> np.ndarray | None:
        """The probabilities at once if the network is free and nobody queues, else None.

        Never waits for the network: it may be called on the event loop (a lone request)."""
        if self._queue.busy or not self._lock.acquire(blocking=False):
            return None
        try:
            return probabilities(self.net, images, self.device, self.activation)
        finally:
            self._lock.release()

    async def __call__(self, images: np.ndarray) -> np.ndarray:
        """The probabilities, batched with concurrent calls (raises batcher.Overloaded)."""
        return await self._queue(images)

    async def _forward_async(self, batch: np.ndarray) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.forward, batch)
