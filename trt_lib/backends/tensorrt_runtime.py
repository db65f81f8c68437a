"""The real TensorRT runtime: runs an engine file on the current CUDA GPU for both backends.

This is the only code that needs a GPU and a TensorRT runtime, so it stays small and plain: the caller's
tensors are bound as they are (no copies), the output buffer is reused (the WebUI's samplers consume each
output before the next call), nothing waits for the GPU. Full TensorRT calls of fixed shapes are replayed
from CUDA graphs (:mod:`trt_lib.engines.cuda_graphs`, tested on the device GPU); TensorRT for RTX captures its
own. The TensorRT module is imported only when a runner is made, so this file imports anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..engines.cuda_graphs import GraphCache
from ..engines.runtime import EngineProfile, EngineRunner, Shape
from ..errors import EngineRunError
from ..store.engine_store import atomic_write_bytes
from .trt10 import gpu_capability, logger_class

if TYPE_CHECKING:
    from .trt10 import Backend


class TensorRTRunner(EngineRunner):
    """One engine; one execution context per optimisation profile, made on first use."""

    def __init__(self, backend: Backend, path: Path, input_names: Sequence[str], output_name: str,
                 profiles: Sequence[EngineProfile], *, onnx_path: Path | None, cache_dir: Path) -> None:
        super().__init__(path, input_names, output_name, profiles)
        self.runtime_name = backend.label
        if gpu_capability() is None:
            raise EngineRunError(f"{backend.label} engines run on an NVIDIA GPU with CUDA, and PyTorch sees none "
                                 f"here, so {self.path.name} cannot be loaded. Choose None for SD Unet to generate "
                                 "with the PyTorch UNet, or set Settings → TensorRT → \"When no engine covers a "
                                 "generation\" to fallback.")
        trt = self._trt = backend.module()
        self._label = backend.label
        self._logger = logger_class(trt)(backend.label)
        self._runtime = trt.Runtime(self._logger)
        try:
            plan = self.path.read_bytes()
        except OSError as e:
            raise EngineRunError(f"cannot read engine {self.path.name}: {e}") from e
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineRunError(
                f"{self.path.name} cannot be loaded by {backend.label} {trt.__version__} on this GPU (compute "
                f"capability {gpu_capability()}): it was built for another GPU or another {backend.label} "
                f"version, or the file is damaged; rebuild it in the TensorRT tab. "
                f"({'; '.join(self._logger.errors[-3:])})")
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._dtypes = {name: _torch_dtype(trt, self._engine.get_tensor_dtype(name))
                        for name in (*self.input_names, output_name)}
        self._contexts: dict[int, Any] = {}
        self._shapes: dict[int, tuple[Shape, ...]] = {}
        self._outputs: dict[Shape, torch.Tensor] = {}
        # TensorRT for RTX compiles kernels on first run: its runtime cache keeps them across WebUI restarts.
        self._runtime_cache: Any = None
        self._cache_path = cache_dir / f"{backend.name}-runtime.cache" if backend.runtime_config else None
        self._graphs = None if backend.runtime_config else GraphCache()
        if self._engine.refittable and onnx_path is not None:
            self._refit_from_onnx(Path(onnx_path))

    # -- contexts ------------------------------------------------------------------------------------------

    def _context(self, index: int) -> Any:
        context = self._contexts.get(index)
        if context is None:
            if self._cache_path is not None:
                config = self._engine.create_runtime_config()
                if self._runtime_cache is None:
                    self._runtime_cache = config.create_runtime_cache()
                    if self._cache_path.is_file():  # rejected (False) when made by another GPU or version
                        self._runtime_cache.deserialize(self._cache_path.read_bytes())
                config.set_runtime_cache(self._runtime_cache)
                # The runtime captures and replays CUDA graphs itself, re-capturing when shapes or addresses
                # change; capturing by hand would need fixed input buffers, i.e. a copy of every input.
                config.cuda_graph_strategy = self._trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
                context = self._engine.create_execution_context(config)
            else:
                context = self._engine.create_execution_context()
            if context is None:
                raise EngineRunError(f"{self._label} could not create an execution context for {self.path.name} "
                                     f"(out of GPU memory?): {'; '.join(self._logger.errors[-3:])}")
            context.set_optimization_profile_async(index, torch.cuda.current_stream().cuda_stream)
            self._contexts[index] = context
        return context

    def infer(self, feeds: Mapping[str, torch.Tensor], profile_index: int) -> torch.Tensor:
        bound = []
        for name in self.input_names:
            tensor = feeds[name]
            if tensor.device != self._device:
                raise EngineRunError(f"input {name} is on {tensor.device}; {self.path.name} runs on {self._device}")
            # The engine is strongly typed in the export's dtypes; a caller in another dtype (e.g. fp32
            # timesteps) gets one cast here, kept alive in ``bound`` until the call is enqueued.
            if tensor.dtype != self._dtypes[name] or not tensor.is_contiguous():
                tensor = tensor.to(self._dtypes[name]).contiguous()
            bound.append(tensor)
        if self._graphs is None:
            return self._enqueue(profile_index, bound)
        return self._graphs.run(profile_index, bound, partial(self._enqueue, profile_index))

    def _enqueue(self, profile_index: int, bound: Sequence[torch.Tensor]) -> torch.Tensor:
        context = self._context(profile_index)
        shapes = tuple(tuple(t.shape) for t in bound)
        if self._shapes.get(profile_index) != shapes:
            for name, shape in zip(self.input_names, shapes):
                context.set_input_shape(name, shape)
            self._shapes[profile_index] = shapes
        for name, tensor in zip(self.input_names, bound):
            context.set_tensor_address(name, tensor.data_ptr())
        out_shape = tuple(context.get_tensor_shape(self.output_name))
        out = self._outputs.get(out_shape)
        if out is None:
            out = self._outputs[out_shape] = torch.empty(out_shape, dtype=self._dtypes[self.output_name],
                                                         device=self._device)
        context.set_tensor_address(self.output_name, out.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise EngineRunError(f"{self._label} failed to run {self.path.name} for "
                                 f"{', '.join(f'{n} {list(s)}' for n, s in zip(self.input_names, shapes))}: "
                                 f"{'; '.join(self._logger.errors[-3:])}")
        return out

    # -- weights -------------------------------------------------------------------------------------------

    def _refit_from_onnx(self, onnx_path: Path) -> None:
        """Put the ONNX's weights into the engine (a weight-stripped plan has none of its own)."""
        refitter = self._trt.Refitter(self._engine, self._logger)
        parser = self._trt.OnnxParserRefitter(refitter, self._logger)
        if not parser.refit_from_file(str(onnx_path)) or not refitter.refit_cuda_engine():
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] + self._logger.errors[-3:]
            raise EngineRunError(f"cannot load the weights of {self.path.name} from {onnx_path.name}: "
                                 f"{'; '.join(errors)}")

    def refit(self, weights: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Replace named weights (ONNX initializer names) in place, e.g. to switch LoRAs without a rebuild."""
        if not self._engine.refittable:
            raise EngineRunError(f"{self.path.name} was built without refit; rebuild it with LoRA refit enabled")
        trt = self._trt
        refitter = trt.Refitter(self._engine, self._logger)
        keep = []  # the buffers must live until refit_cuda_engine returns
        for name, value in weights.items():
            tensor = torch.from_numpy(value) if isinstance(value, np.ndarray) else value.detach()
            want = _torch_dtype(trt, refitter.get_weights_prototype(name).dtype)
            tensor = tensor.to(self._device, want).contiguous()  # one cast/copy to the engine's dtype on the GPU
            keep.append(tensor)
            weights_ = trt.Weights(_trt_dtype(trt, want), tensor.data_ptr(), tensor.numel())
            if not refitter.set_named_weights(name, weights_, trt.TensorLocation.DEVICE):
                raise EngineRunError(f"{self.path.name} has no refittable weight {name!r} of "
                                     f"{tensor.numel()} values")
        if not refitter.refit_cuda_engine():
            raise EngineRunError(f"refitting {self.path.name} failed: {'; '.join(self._logger.errors[-3:])}")
        if self._graphs is not None:
            self._graphs.clear()  # captured with the old weights' addresses

    def close(self) -> None:
        """Save the runtime kernel cache, then free contexts, buffers and the engine."""
        if self._runtime_cache is not None and self._cache_path is not None:
            atomic_write_bytes(self._cache_path, self._runtime_cache.serialize())
        if self._graphs is not None:
            self._graphs.clear()
        self._contexts.clear()
        self._outputs.clear()
        self._runtime_cache = None
        self._engine = None


_DTYPES = {"HALF": torch.float16, "FLOAT": torch.float32, "BF16": torch.bfloat16, "INT32": torch.int32,
           "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}


def _dtype_pairs(trt: Any) -> list[tuple[Any, torch.dtype]]:
    """The module's ``DataType`` members we map, read by name: a release without one still loads engines."""
    return [(getattr(trt.DataType, name), ours) for name, ours in _DTYPES.items() if hasattr(trt.DataType, name)]


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    for theirs, ours in _dtype_pairs(trt):
        if theirs == dtype:
            return ours
    raise EngineRunError(f"engine tensors of type {dtype} are not supported")


def _trt_dtype(trt: Any, dtype: torch.dtype) -> Any:
    return next(theirs for theirs, ours in _dtype_pairs(trt) if ours == dtype)
