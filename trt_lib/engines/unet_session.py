"""Runs UNet calls on the engines of one checkpoint: picks engine and profile per call shape, keeps the
runners it loaded, and passes the caller's tensors straight through.

The per-call work on the fast path is one dictionary lookup keyed by the input shapes; engine choice,
loading and profile selection happen once per new shape.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

from ..errors import EngineRunError
from ..model.families import Family
from ..model.profiles import UnetCall
from ..store.engine_store import EngineEntry
from .lora_refit import LoraRefitter
from .matching import able, choose, uncovered
from .runtime import EngineRunner

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
        self._by_shape: dict[tuple, tuple[EngineRunner, tuple[torch.Tensor, ...]]] = {}
        """Per call shape (and whether it carries residuals): its runner and the zero residuals it binds."""
        self._names = family.input_names

    def runner_for(self, call: UnetCall, controlnet: bool = False) -> EngineRunner:
        """The loaded runner whose engine covers ``call`` (loading it, and unloading the oldest, if needed);
        with ``controlnet``, a ControlNet-ready one."""
        return self._load(call, controlnet)[1]

    def _load(self, call: UnetCall, controlnet: bool) -> tuple[EngineEntry, EngineRunner]:
        choice = choose(self.entries, call, controlnet)
        if choice is None:
            entries = able(self.entries, controlnet, self.checkpoint)
            raise uncovered(entries, [call], [call], self.family, self.checkpoint)
        engine_id = choice.entry.id
        if engine_id in self._runners:
            self._runners.move_to_end(engine_id)
            return choice.entry, self._runners[engine_id]
        while len(self._runners) >= self._max_loaded:
            _, old = self._runners.popitem(last=False)
            self._by_shape = {k: b for k, b in self._by_shape.items() if b[0] is not old}
            old.close()
        runner = self._load_runner(choice.entry)
        if self.loras is not None:
            try:
                self.loras.adopt(choice.entry, runner)
            except BaseException:
                runner.close()
                raise
        self._runners[engine_id] = runner
        return choice.entry, runner

    def loaded(self) -> list[tuple[EngineEntry, EngineRunner]]:
        """The runners loaded now, with their engines."""
        by_id = {e.id: e for e in self.entries}
        return [(by_id[i], r) for i, r in self._runners.items()]

    def sync_loras(self) -> None:
        """Bring every loaded runner to the wanted LoRA set (runners loaded later are brought on load)."""
        if self.loras is not None:
            for entry, runner in self.loaded():
                self.loras.sync(entry, runner)

    def preload(self, call: UnetCall, controlnet: bool = False) -> None:
        """Load the engine for a typical call before sampling, so the first step is not slow."""
        self.runner_for(call, controlnet)

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                 y: torch.Tensor | None = None,
                 control: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """One UNet call; ``control``: ControlNet's residuals (``None`` where a point gets none) for a
        ControlNet-ready engine. Without them such an engine gets its cached zero residuals."""
        key = (x.shape, context.shape, control is not None)
        bound = self._by_shape.get(key)
        if bound is None:
            entry, runner = self._load(UnetCall.from_inputs(x.shape, context.shape), control is not None)
            bound = self._by_shape[key] = (runner, _zeros(entry, x))
        runner, zeros = bound
        feeds = dict(zip(self._names, (x, timesteps, context, y)))
        if control is None:
            residuals: Sequence[torch.Tensor | None] = zeros
        elif len(control) != len(zeros):
            raise EngineRunError(f"ControlNet gave {len(control)} residuals; the engine takes {len(zeros)}")
        else:
            residuals = [z if c is None else c for c, z in zip(control, zeros)]
        feeds.update(zip(runner.input_names[len(self._names):], residuals))
        return runner(feeds)


    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()
        self._by_shape.clear()


def _zeros(entry: EngineEntry, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Zero residuals for ``entry``'s residual inputs at the size of ``x`` (none for a plain engine)."""
    rows, _, height, width = x.shape
    return tuple(torch.zeros(rows, p.channels, height // p.downscale, width // p.downscale,
                             dtype=x.dtype, device=x.device) for p in entry.residual_points)
