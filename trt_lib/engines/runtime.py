"""The engine runner interface shared by the real TensorRT runtime and the ONNX Runtime reference runtime.

Both runners take the WebUI's tensors as they come (fp16 on the GPU in practice), check them against the
engine's optimisation profiles with the same code, and return the output as a torch tensor on the inputs'
device. Only :mod:`trt_lib.backends.tensorrt_runtime` talks to a TensorRT runtime; everything else here is
tested on the CPU.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import EngineRunError

Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]
EngineProfile = Mapping[str, ShapeRange]
"""One optimisation profile: input name -> (min, opt, max) shape, as :meth:`Family.engine_shapes` gives."""


def profile_fits(profile: EngineProfile, shapes: Mapping[str, Shape]) -> bool:
    """Whether every input shape lies inside the profile's [min, max] box."""
    for name, (lo, _, hi) in profile.items():
        shape = shapes.get(name)
        if shape is None or len(shape) != len(lo):
            return False
        if any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
    return True


class EngineRunner(ABC):
    """Runs one engine file for UNet calls.

    ``profiles`` are the engine's optimisation profiles in build order; a call is run with the first profile
    whose box holds all its input shapes, as TensorRT requires one profile per execution.
    """

    #: Shown to users where they could see which runtime ran; other runtimes must not say "TensorRT".
    runtime_name = "engine"

    def __init__(self, path: Path, input_names: Sequence[str], output_name: str,
                 profiles: Sequence[EngineProfile]) -> None:
        self.path = Path(path)
        self.input_names = tuple(input_names)
        self.output_name = output_name
        self.profiles = [dict(p) for p in profiles]
        self._last: tuple[tuple[Shape, ...], int] | None = None

    def select_profile(self, feeds: Mapping[str, torch.Tensor]) -> int:
        """Index of the profile that takes these inputs; :class:`EngineRunError` naming the shapes if none."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise EngineRunError(f"engine {self.path.name} needs inputs {', '.join(missing)}")
        key = tuple(tuple(feeds[n].shape) for n in self.input_names)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        shapes = dict(zip(self.input_names, key))
        for index, profile in enumerate(self.profiles):
            if profile_fits(profile, shapes):
                self._last = (key, index)
                return index
        got = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
        allowed = "; ".join(", ".join(f"{n} {list(lo)}..{list(hi)}" for n, (lo, _, hi) in p.items())
                            for p in self.profiles)
        raise EngineRunError(f"engine {self.path.name} has no profile for {got} (profiles: {allowed})")

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Run one call; the result may be a buffer the runner reuses on the next call of the same shape."""
        return self.infer(feeds, self.select_profile(feeds))

    @abstractmethod
    def infer(self, feeds: Mapping[str, torch.Tensor], profile_index: int) -> torch.Tensor:
        """Run the engine with ``feeds`` under profile ``profile_index``."""

    def refit(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace the named weights (ONNX initializer names) in place; the others keep their values.

        Runners whose engine cannot be refitted say so; :class:`EngineRunError`.
        """
        raise EngineRunError(f"engine {self.path.name} cannot be refitted by {self.runtime_name}")

    def close(self) -> None:
        """Free what the runner holds (engine, contexts, buffers)."""
