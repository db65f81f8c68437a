"""CUDA graph capture and replay for engine calls, one graph per set of input shapes.

A UNet engine launches hundreds of kernels per call; at small batch sizes on fast GPUs launching them costs
a noticeable share of the step. A captured graph launches them all at once. A graph reads and writes fixed
addresses, so each call copies its inputs into the graph's buffers (a few hundred KB for a UNet call) and
gets the graph's output buffer back. Full TensorRT uses this; TensorRT for RTX captures graphs itself.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
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


class GraphCache:
    """Graphs of one runner's calls, keyed by the caller (e.g. profile and input shapes), at most
    ``max_graphs`` kept. If capture fails, calls run as they are from then on and ``error`` says why."""

    def __init__(self, max_graphs: int = 8) -> None:
        self.max_graphs = max_graphs
        self.error: str | None = None
        self._graphs: OrderedDict[Hashable, _Graph] = OrderedDict()

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, key: Hashable, inputs: Sequence[torch.Tensor], enqueue: Enqueue) -> torch.Tensor:
        """The call's output: from the graph for ``key`` (captured now if new) or, after a failed capture,
        from ``enqueue`` itself. The output buffer is the graph's: the next call with this key overwrites it."""
        if self.error is not None:
            return enqueue(inputs)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(inputs, enqueue)
            except RuntimeError as e:
                self.error = f"CUDA graph capture failed, running without graphs: {e}"
                warnings.warn(self.error, RuntimeWarning, stacklevel=2)
                self.clear()
                torch.cuda.synchronize()  # a failed capture leaves the side stream's work in flight
                return enqueue(inputs)
            while len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)
            self._graphs[key] = entry
        else:
            self._graphs.move_to_end(key)
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
