"""The reference runtime: runs an engine's own ONNX export with ONNX Runtime, behind :class:`EngineRunner`.

Chosen by the user (Settings → TensorRT → "Run engines with: ONNX Runtime (reference)"), never by itself: it
lets the run-time path (provider, job check, LoRA refit, engine check) work where no TensorRT engine can run
(no NVIDIA GPU, a GPU the installed TensorRT does not support), and gives an independent second opinion on
an engine's ONNX. It checks, it does not speed up: expect no gain over the PyTorch UNet on CUDA (an engine
check of a real SD 1.5 took 2 s there on an H200, ``bench/check_bench.py``), far slower on the CPU. It uses
ONNX Runtime's CUDA provider where ``onnxruntime-gpu`` is installed and torch sees a GPU, else the CPU
provider. It is the runtime the tests and benchmarks run engines with, since engines cannot execute on the
machines that test this project. Users see it named "ONNX Runtime", never TensorRT.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import BackendUnavailableError, EngineRunError
from ..install_plan import REFERENCE_RUNTIME as LABEL
from .runtime import EngineProfile, EngineRunner

if TYPE_CHECKING:
    from ..store.engine_store import EngineEntry, EngineStore

NAME = "onnxruntime"
"""What ``Runtime.backend`` calls this runtime; users see :data:`LABEL`."""
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
CUDA_MAX_ELEMENTS = 2**31 - 1
"""ONNX Runtime's CUDA kernels index tensors with 32-bit integers: measured on an H200 (onnxruntime-gpu 1.31.1),
an SD 1.5 export at 8 rows of 768x768 px (attention scores of 8 x 8 x 9216 x 9216 elements) ended in an illegal
memory access that leaves the CUDA context broken. Calls whose scores could exceed this run on the CPU."""
HEADS_BOUND = 10
"""At least the attention heads of any family's first attention level (SD 1.x 8, SD 2.x 5, SDXL 10 at half
size), for a bound on the scores' elements from the latent size alone."""


def version() -> str:
    """The installed ONNX Runtime's version; :class:`BackendUnavailableError` with the fix when it is missing."""
    try:
        import onnxruntime as ort
    except Exception as e:  # ImportError, or a broken install (missing CUDA libraries for -gpu)
        raise BackendUnavailableError(
            f"ONNX Runtime cannot be loaded ({e}). Keep '{LABEL}' selected under Settings → "
            "TensorRT → 'Run engines with' and restart the WebUI (install.py installs it), or install it in the "
            "WebUI's Python: python -m pip install onnxruntime (onnxruntime-gpu with a CUDA GPU)") from e
    return str(ort.__version__)


def providers() -> list[str]:
    """ONNX Runtime's CUDA provider where it is installed and torch sees a GPU, then the CPU provider."""
    import onnxruntime as ort

    cuda = CUDA in ort.get_available_providers() and torch.cuda.is_available()
    return [CUDA, CPU] if cuda else [CPU]


class OnnxRuntimeRunner(EngineRunner):
    """Runs an ONNX model on ONNX Runtime (CUDA or CPU provider), accepting and returning torch tensors.

    Inputs go through host memory: a few MB per call, small beside the UNet's own work, and the same on both
    providers.
    """

    def __init__(self, onnx_path: Path, input_names: Sequence[str], output_name: str,
                 profiles: Sequence[EngineProfile],
                 initializer_overrides: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__(onnx_path, input_names, output_name, profiles)
        self._values: dict[str, np.ndarray] = {}
        self._names: set[str] | None = None
        self._cpu_session: Any = None
        self._session = self._open(initializer_overrides or {})
        self._dtypes = {i.name: i.type for i in self._session.get_inputs()}
        device = "CUDA" if self._session.get_providers()[0] == CUDA else "CPU"
        self.runtime_name = f"ONNX Runtime (reference, {device})"

    def _open(self, overrides: Mapping[str, np.ndarray], cpu: bool = False) -> Any:
        """A session whose initializers are the file's, except ``overrides`` (added to earlier ones); on the
        CPU provider when ``cpu`` or when any initializer is overridden: measured on an H200 (onnxruntime-gpu
        1.31.1), the CUDA provider ran an export whose ``conv_out.weight`` was overridden 20 % off as if it
        held the file's weight (relative error 1.8e-3; the CPU provider: 0.2), and overrides stand in for a
        refit, which must never be silently lost."""
        import onnxruntime as ort

        values = {**self._values, **{name: np.ascontiguousarray(v) for name, v in overrides.items()}}
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Overrides stand in for a TensorRT refit; the OrtValues must outlive the session.
        self._ort_values = [ort.OrtValue.ortvalue_from_numpy(v) for v in values.values()]
        for name, value in zip(values, self._ort_values):
            options.add_initializer(name, value)
        if values:
            # ORT applies overrides after optimising the graph, so its constant folding bakes the file's weights
            # into the Transposes that feed MatMuls (measured); without it every override reaches the
            # computation, as a TensorRT refit does. The other basic optimisations stay on: ORT up to 1.30 cannot
            # load an fp16 export on the CPU without their Cast elimination (its fp16-to-fp32 cast insertion
            # types a no-op fp16 Cast float). The extended ones stay off: they too bake file weights (measured).
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        try:
            session = ort.InferenceSession(str(self.path), options,
                                           providers=[CPU] if cpu or values else providers(),
                                           disabled_optimizers=["ConstantFolding"] if values else [])
        except Exception as e:  # ORT raises its own untyped errors for unreadable files and unknown names
            raise EngineRunError(f"ONNX Runtime cannot load {self.path.name}: {e}") from e
        self._values = values
        return session

    def refit(self, weights: Mapping[str, np.ndarray]) -> None:
        """As a TensorRT refit: the named initializers take these values, the rest keep theirs (a new
        session, since ONNX Runtime cannot change weights in place)."""
        unknown = sorted(set(weights) - self._initializer_names())
        if unknown:
            raise EngineRunError(f"{self.path.name} has no weight {', '.join(unknown[:3])}")
        self._session = self._open(weights)
        self._cpu_session = None

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
        (out,) = self._session_for(first.shape).run([self.output_name], arrays)
        return torch.from_numpy(out).to(first.device, first.dtype)

    def _session_for(self, latent: torch.Size) -> Any:
        """The session for a call of this latent shape: a CPU one where the CUDA kernels could overflow."""
        rows, _, height, width = latent
        if self._session.get_providers()[0] != CUDA or rows * HEADS_BOUND * (height * width) ** 2 <= CUDA_MAX_ELEMENTS:
            return self._session
        if self._cpu_session is None:
            print(f"[TensorRT] ONNX Runtime (reference): {rows} rows of {width * 8}x{height * 8} px run on the CPU: "
                  "larger than its CUDA kernels can take", file=sys.stderr)
            self._cpu_session = self._open({}, cpu=True)
        return self._cpu_session


def reference_runner(store: EngineStore, entry: EngineEntry) -> OnnxRuntimeRunner:
    """The reference runner for ``entry``: its own ONNX export, limited to its own profiles."""
    from ..model.families import get_family

    family = get_family(entry.family)
    onnx = store.onnx_path(entry)
    if onnx is None:
        raise EngineRunError(f"engine {entry.id} has no ONNX export recorded, which ONNX Runtime would run")
    names, profiles = entry.engine_inputs(family)
    return OnnxRuntimeRunner(onnx, names, family.output_name, profiles)
