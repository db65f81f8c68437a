"""ONNX Runtime stand-in for a TensorRT engine: runs the engine's own ONNX behind :class:`EngineRunner`.

Engines cannot execute on the machines that test this project (full TensorRT is not installable there and
TensorRT for RTX does not run on compute capability 9.0), so tests and benchmarks run the very ONNX the
engine was built from, restricted to the engine's profiles, through this runner. Users never see it
called TensorRT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import EngineRunError
from .runtime import EngineProfile, EngineRunner

if TYPE_CHECKING:
    from .store import EngineEntry, EngineStore


class OnnxRuntimeRunner(EngineRunner):
    """Runs an ONNX model on ONNX Runtime's CPU provider, accepting and returning torch tensors."""

    runtime_name = "ONNX Runtime (stand-in)"

    def __init__(self, onnx_path: Path, input_names: Sequence[str], output_name: str,
                 profiles: Sequence[EngineProfile],
                 initializer_overrides: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__(onnx_path, input_names, output_name, profiles)
        self._values: dict[str, np.ndarray] = {}
        self._names: set[str] | None = None
        self._session = self._open(initializer_overrides or {})
        self._dtypes = {i.name: i.type for i in self._session.get_inputs()}

    def _open(self, overrides: Mapping[str, np.ndarray]) -> Any:
        """A session whose initializers are the file's, except ``overrides`` (added to earlier ones)."""
        import onnxruntime as ort

        values = {**self._values, **{name: np.ascontiguousarray(v) for name, v in overrides.items()}}
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Overrides stand in for a TensorRT refit; the OrtValues must outlive the session.
        self._ort_values = [ort.OrtValue.ortvalue_from_numpy(v) for v in values.values()]
        for name, value in zip(values, self._ort_values):
            options.add_initializer(name, value)
        if values:
            # ORT folds weight transposes at load from the file's values, ignoring overrides (measured):
            # without graph optimisations every override reaches the computation, as a TensorRT refit does.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own untyped errors for unreadable files and unknown names
            raise EngineRunError(f"cannot load {self.path.name}: {e}") from e
        self._values = values
        return session

    def refit(self, weights: Mapping[str, np.ndarray]) -> None:
        """As a TensorRT refit: the named initializers take these values, the rest keep theirs (a new
        session, since ONNX Runtime cannot change weights in place)."""
        unknown = sorted(set(weights) - self._initializer_names())
        if unknown:
            raise EngineRunError(f"{self.path.name} has no weight {', '.join(unknown[:3])}")
        self._session = self._open(weights)

    @property
    def refitted(self) -> Mapping[str, np.ndarray]:
        """The initializer values refits have set (name -> array), the weights this runner holds in place of
        the file's: what a check that a switch restored the exported weights compares bit for bit."""
        return dict(self._values)

    def _initializer_names(self) -> set[str]:
        import onnx

        if self._names is None:
            model = onnx.load(str(self.path), load_external_data=False)
            self._names = {i.name for i in model.graph.initializer}
        return self._names

    def infer(self, feeds: Mapping[str, torch.Tensor], profile_index: int) -> torch.Tensor:
        first = feeds[self.input_names[0]]
        arrays = {}
        for name in self.input_names:
            tensor = feeds[name].detach()
            want = torch.float16 if self._dtypes[name] == "tensor(float16)" else torch.float32
            arrays[name] = tensor.to("cpu", want).contiguous().numpy()
        (out,) = self._session.run([self.output_name], arrays)
        return torch.from_numpy(out).to(first.device, first.dtype)


def stand_in_runner(store: EngineStore, entry: EngineEntry) -> OnnxRuntimeRunner:
    """The stand-in for ``entry``: its own ONNX export, limited to its own profiles."""
    from .families import get_family

    family = get_family(entry.family)
    onnx = store.onnx_path(entry)
    if onnx is None:
        raise EngineRunError(f"engine {entry.id} has no ONNX export recorded")
    return OnnxRuntimeRunner(onnx, family.input_names, family.output_name,
                             [family.engine_shapes(p) for p in entry.parsed_profiles])
