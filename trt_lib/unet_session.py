"""Runs UNet calls on the engines of one checkpoint: picks engine and profile per call shape, keeps the
runners it loaded, and passes the caller's tensors straight through.

The per-call work on the fast path is one dictionary lookup keyed by the input shapes; engine choice,
loading and profile selection happen once per new shape.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

from .errors import NoProfileError
from .families import Family
from .lora_refit import LoraRefitter
from .matching import choose, explain, need
from .profiles import UnetCall
from .runtime import EngineRunner
from .store import EngineEntry

RunnerFactory = Callable[[EngineEntry], EngineRunner]


class UnetSession:
    """The engines of one checkpoint, used in place of its PyTorch UNet."""

    def __init__(self, entries: Sequence[EngineEntry], family: Family, checkpoint: str,
                 load_runner: RunnerFactory, max_loaded: int = 2, loras: LoraRefitter | None = None) -> None:
        self.entries = list(entries)
        self.loras = loras
        """Keeps the runners at the job's prompt LoRAs (refittable engines); None: never refitted."""
        self.family = family
        self.checkpoint = checkpoint
        self._load_runner = load_runner
        self._max_loaded = max_loaded
        self._runners: OrderedDict[str, EngineRunner] = OrderedDict()
        self._by_shape: dict[tuple, EngineRunner] = {}
        self._names = family.input_names

    def runner_for(self, call: UnetCall) -> EngineRunner:
        """The loaded runner whose engine covers ``call`` (loading it, and unloading the oldest, if needed)."""
        choice = choose(self.entries, call)
        if choice is None:
            needs = [need(self.entries, call)]
            raise NoProfileError(explain(self.entries, needs, [call], self.family, self.checkpoint), needs)
        engine_id = choice.entry.id
        if engine_id in self._runners:
            self._runners.move_to_end(engine_id)
            return self._runners[engine_id]
        while len(self._runners) >= self._max_loaded:
            _, old = self._runners.popitem(last=False)
            self._by_shape = {k: r for k, r in self._by_shape.items() if r is not old}
            old.close()
        runner = self._load_runner(choice.entry)
        if self.loras is not None:
            try:
                self.loras.adopt(choice.entry, runner)
            except BaseException:
                runner.close()
                raise
        self._runners[engine_id] = runner
        return runner

    def loaded(self) -> list[tuple[EngineEntry, EngineRunner]]:
        """The runners loaded now, with their engines."""
        by_id = {e.id: e for e in self.entries}
        return [(by_id[i], r) for i, r in self._runners.items()]

    def sync_loras(self) -> None:
        """Bring every loaded runner to the wanted LoRA set (runners loaded later are brought on load)."""
        if self.loras is not None:
            for entry, runner in self.loaded():
                self.loras.sync(entry, runner)

    def preload(self, call: UnetCall) -> None:
        """Load the engine for a typical call before sampling, so the first step is not slow."""
        self.runner_for(call)

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        key = (x.shape, context.shape)
        runner = self._by_shape.get(key)
        if runner is None:
            runner = self.runner_for(UnetCall.from_inputs(x.shape, context.shape))
            self._by_shape[key] = runner
        values = (x, timesteps, context, y)
        return runner(dict(zip(self._names, values)))

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()
        self._by_shape.clear()
