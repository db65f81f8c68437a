"""CUDA graph capture and replay for engine calls of fixed shapes.

A UNet engine launches hundreds of kernels per call; at small batch sizes on fast GPUs launching them costs
a noticeable share of the step. A captured graph launches them all at once. A graph reads and writes fixed
addresses, so each call copies its inputs into the graph's buffers (a few hundred KB for a UNet call) and
gets the graph's output buffer back. Full TensorRT uses this; TensorRT for RTX captures graphs itself.

One graph per execution context, for one set of input shapes: TensorRT keeps shape-dependent state in the
context, which a second shape set would change under an earlier graph. So a context whose calls change
shape (a dynamic profile used at several sizes) runs without a graph from then on; a static profile, or a
job that keeps its shapes, replays.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

Enqueue = Callable[[Sequence[torch.Tensor]], torch.Tensor]
"""Queues one call on the current CUDA stream, reading ``inputs``, and returns the output tensor (without
waiting for the GPU)."""


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    output: torch.Tensor

    @property
    def shapes(self) -> tuple[torch.Size, ...]:
        return tuple(t.shape for t in self.inputs)


class GraphCache:
    """Graphs of one runner's calls, one per execution context (``key``). If capture fails, calls run as
    they are from then on and ``error`` says why."""

    def __init__(self) -> None:
        self.error: str | None = None
        self._graphs: dict[Hashable, _Graph] = {}
        self._changing: set[Hashable] = set()
        """Contexts whose calls changed shape: they run without a graph."""

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, key: Hashable, inputs: Sequence[torch.Tensor], enqueue: Enqueue) -> torch.Tensor:
        """The call's output, from the graph of context ``key`` (captured on its first call) or from
        ``enqueue`` itself where no graph applies. A graph's output buffer is overwritten by its next call."""
        if self.error is not None or key in self._changing:
            return enqueue(inputs)
        entry = self._graphs.get(key)
        if entry is not None and entry.shapes != tuple(t.shape for t in inputs):
            del self._graphs[key]
            self._changing.add(key)
            return enqueue(inputs)
        if entry is None:
            try:
                entry = self._graphs[key] = self._capture(inputs, enqueue)
            except RuntimeError as e:
                self.error = f"CUDA graph capture failed, running without graphs: {e}"
                warnings.warn(self.error, RuntimeWarning, stacklevel=2)
                self.clear()
                torch.cuda.synchronize()  # a failed capture leaves the side stream's work in flight
                return enqueue(inputs)
        for buffer, tensor in zip(entry.inputs, inputs):
            buffer.copy_(tensor, non_blocking=True)
        entry.graph.replay()
        return entry.output

    def clear(self) -> None:
        """Forget every graph (needed when the engine's weights change: graphs keep the old addresses)."""
        self._graphs.clear()

    @staticmethod
    def _capture(inputs: Sequence[torch.Tensor], enqueue: Enqueue) -> _Graph:
        buffers = [t.clone() for t in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            enqueue(buffers)  # the first run after a shape change does one-time setup outside the graph
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = enqueue(buffers)
        return _Graph(graph, buffers, output)
