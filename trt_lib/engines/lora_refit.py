"""LoRAs on engines: which LoRA set an engine holds, and the refit arrays that move it to another set.

The WebUI adapter merges weights with the WebUI's own Lora code (from its CPU backups) and hands the merged
tensors here; this module decides which weights to write and turns them into arrays named as the engine's
ONNX initializers. A refit only ever writes whole weights (base plus the wanted set's deltas), never deltas
onto what the engine holds, so switching A -> B -> none ends at the exported base weights bit for bit, and
only the weights that either set changes are written.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import TrtError
from ..export.onnx_export import WeightRef, initializer_values
from ..store.engine_store import EngineEntry
from .runtime import EngineRunner

WeightMap = Mapping[str, WeightRef]


class LoraError(TrtError):
    """A LoRA that cannot be used as asked (unknown name, or not applicable to the engine)."""

    status_code = 422


class UncoveredLoraError(LoraError):
    """The engine cannot take a LoRA: it was not built refittable, or the LoRA changes weights it lacks."""


@dataclass(frozen=True)
class LoraUse:
    """One LoRA as it reaches the UNet: its name, UNet multiplier and optional rank limit (``dyn``)."""

    name: str
    weight: float
    dyn_dim: int | None = None

    def label(self) -> str:
        return f"{self.name}:{self.weight:g}" + (f" dyn {self.dyn_dim}" if self.dyn_dim is not None else "")


LoraKey = tuple[LoraUse, ...]
"""A LoRA set, in the order the WebUI merges it; () is the base weights."""


def lora_key(uses: Iterable[LoraUse]) -> LoraKey:
    """The set's key: LoRAs with UNet weight 0 leave the UNet as it is and are dropped."""
    return tuple(u for u in uses if u.weight != 0)


def describe(key: LoraKey) -> str:
    return ", ".join(u.label() for u in key) or "no LoRA"


def key_of_entries(loras: Sequence[Mapping[str, Any]]) -> LoraKey:
    """The key of a manifest ``loras`` list (``[{"name", "weight"}]``)."""
    return lora_key(LoraUse(str(lo["name"]), float(lo["weight"])) for lo in loras)


def parameter_keys(root: torch.nn.Module, layers: Iterable[torch.nn.Module]) -> frozenset[str]:
    """``state_dict`` keys of the parameters of ``layers`` that are inside ``root`` (others are ignored:
    a LoRA's text-encoder layers do not belong to the UNet)."""
    names = {id(m): name for name, m in root.named_modules()}
    keys = set()
    for layer in layers:
        prefix = names.get(id(layer))
        if prefix is not None:
            keys.update(f"{prefix}.{p}" if prefix else p for p, _ in layer.named_parameters(recurse=False))
    return frozenset(keys)


def state_digest(module: torch.nn.Module) -> dict[str, str]:
    """A SHA-256 per ``state_dict`` tensor (raw bytes, any dtype or device): two digests are equal only if
    every tensor is equal bit for bit."""
    digests = {}
    for key, tensor in module.state_dict().items():
        raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
        digests[key] = hashlib.sha256(raw.tobytes()).hexdigest()
    return digests


def uncovered(keys: Iterable[str], weight_map: WeightMap) -> list[str]:
    """Of ``keys`` (``state_dict`` keys), those the engine holds no initializer for."""
    mapped = {ref.key for ref in weight_map.values()}
    return sorted(k for k in keys if k not in mapped)


def refit_arrays(values: Mapping[str, torch.Tensor], weight_map: WeightMap) -> dict[str, np.ndarray]:
    """``values`` (``state_dict`` key -> tensor) as arrays named and typed like the engine's initializers."""
    missing = uncovered(values, weight_map)
    if missing:
        raise UncoveredLoraError(f"the engine has no weights for {', '.join(missing[:5])}"
                                 + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    by_key = {ref.key: name for name, ref in weight_map.items()}
    return initializer_values(values, weight_map, [by_key[k] for k in values])


@dataclass(frozen=True)
class MergedWeights:
    """UNet weights under one LoRA set: which ``state_dict`` keys the set changes, and values for those and
    for any other keys asked for (base values where the set leaves them alone)."""

    key: LoraKey
    changed: frozenset[str]
    values: Mapping[str, torch.Tensor]
    seconds: float = 0.0
    """Time the merge took (the WebUI's Lora code on the CPU backups)."""


MergeFn = Callable[[LoraKey, frozenset[str]], MergedWeights]
"""``merge(key, extra)``: the weights ``key`` changes plus the keys in ``extra``, under ``key``."""


@dataclass(frozen=True)
class RefitReport:
    """One switch of one engine, for the job's info text and the log."""

    engine_id: str
    key: LoraKey
    weights: int
    prepare_seconds: float
    refit_seconds: float

    def text(self) -> str:
        return (f"{describe(self.key)} refitted into {self.engine_id} ({self.weights} weights, prepared in "
                f"{self.prepare_seconds:.2f} s, refit {self.refit_seconds:.2f} s)")


class LoraRefitter:
    """Keeps every runner of one session at the wanted LoRA set: one refit per runner per change of set,
    writing only the weights the old or the new set changes. Runners start at their engine's exported
    weights (the base)."""

    def __init__(self, merge: MergeFn, weight_map: Callable[[EngineEntry], WeightMap]) -> None:
        self._merge = merge
        self._weight_map = weight_map
        self._maps: dict[str, WeightMap] = {}
        self.wanted: LoraKey = ()
        self._merged: MergedWeights | None = None
        self._held: weakref.WeakKeyDictionary[EngineRunner, tuple[LoraKey, frozenset[str]]] = \
            weakref.WeakKeyDictionary()
        self.reports: list[RefitReport] = []

    def weight_map(self, entry: EngineEntry) -> WeightMap:
        if entry.onnx_file not in self._maps:
            self._maps[entry.onnx_file] = self._weight_map(entry)
        return self._maps[entry.onnx_file]

    def want(self, key: LoraKey, entries: Sequence[EngineEntry]) -> None:
        """Make ``key`` the wanted set after checking that every engine in ``entries`` can take it;
        :class:`UncoveredLoraError` names the engine and the reason otherwise (the wanted set is unchanged)."""
        if key == self.wanted:
            return
        if key:
            blocked = [e for e in entries if not e.refittable]
            if blocked:
                raise UncoveredLoraError(
                    f"LoRA {describe(key)} cannot be applied: engine {', '.join(e.id for e in blocked)} was built "
                    "without refit; rebuild it with \"Switch prompt LoRAs without a rebuild\" (API: \"refit\": true), "
                    "or bake the LoRA into an engine")
            held = frozenset().union(*(changed for _, changed in self._held.values()))
            changed = self.merged(key, held).changed  # with the held weights too: one merge per change
            for entry in entries:
                missing = uncovered(changed, self.weight_map(entry))
                if missing:
                    raise UncoveredLoraError(
                        f"LoRA {describe(key)} changes {len(missing)} weights engine {entry.id} does not hold "
                        f"(e.g. {missing[0]}); it cannot be refitted into that engine")
        self.wanted = key

    def merged(self, key: LoraKey, extra: frozenset[str]) -> MergedWeights:
        """The merge for ``key`` with values for ``extra`` too; the last one is kept (one merge per change)."""
        cached = self._merged
        if cached is None or cached.key != key or not extra <= cached.values.keys():
            start = time.perf_counter()
            wanted = extra | (cached.values.keys() if cached is not None and cached.key == key else frozenset())
            result = self._merge(key, frozenset(wanted))
            cached = self._merged = MergedWeights(result.key, result.changed, result.values,
                                                  time.perf_counter() - start)
        return cached

    def sync(self, entry: EngineEntry, runner: EngineRunner) -> RefitReport | None:
        """Refit ``runner`` to the wanted set if it holds another one; None when it already holds it."""
        held_key, held_changed = self._held.get(runner, ((), frozenset()))
        if held_key == self.wanted:
            return None
        merged = self.merged(self.wanted, held_changed)
        keys = merged.changed | held_changed
        arrays = refit_arrays({k: merged.values[k] for k in sorted(keys)}, self.weight_map(entry))
        start = time.perf_counter()
        runner.refit(arrays)
        self._held[runner] = (self.wanted, merged.changed)
        report = RefitReport(entry.id, self.wanted, len(arrays), merged.seconds, time.perf_counter() - start)
        self.reports.append(report)
        return report

    def adopt(self, entry: EngineEntry, runner: EngineRunner) -> EngineRunner:
        """A freshly loaded runner (base weights), brought to the wanted set."""
        self.sync(entry, runner)
        return runner
