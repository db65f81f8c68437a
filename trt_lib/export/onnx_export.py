"""Export a UNet with the WebUI's call signature ``(x, timesteps, context[, y])`` to ONNX, with a weight map.

Which exporter: torch 2.13 defaults to the dynamo exporter (``torch.export`` + onnxscript). We use the
TorchScript exporter (``dynamo=False``) because the dynamo one needs ``onnxscript``, which neither this
project's environment nor the WebUI ships, and because the TorchScript exporter, at opset 17, already gives
what TensorRT wants: the family's input and output names, ``dynamic_axes`` as the family states them,
``LayerNormalization`` nodes and attention as MatMul-Softmax-MatMul.

Weights: the graph is traced without its parameters (``export_params=False``, no constant folding), so each
parameter is a graph input named by its ``state_dict`` key (the exporter's pass that merges initializers of
equal value, e.g. all LayerNorm weights of a fresh model, never runs). Those inputs then become initializers
again and the tensors are written once, straight from the module, one at a time, into one external data file:
no 2 GB protobuf is ever built, serialised, parsed or saved again, which is where a plain
``torch.onnx.export`` of the UNet spends its time and host memory. The graph inputs are exactly the family's.
The weight map written beside the ONNX records initializer name, ``state_dict`` key, dtype and shape, read off
the exported graph. TensorRT folds the weight transposes the graph still holds at build time.

The traced graph depends on the module's code and shapes, not on its weights: with a ``graph_cache`` folder,
an export of a module that would trace to a graph kept there (:mod:`.graph_cache`) skips the trace and only
writes its weights; the files equal those of a fresh export byte for byte.

ControlNet-ready exports (``controlnet=True``) take one more input per ControlNet residual, ``control_<i>``,
added where the ControlNet extension adds it (:mod:`.controlnet_export`); weights and weight map are the same.

fp16 exports of families marked ``attention_upcast`` (SD 2.x) get their attention scores computed in fp32
(:mod:`.attention_upcast`), as Stability's reference code and the WebUI's "upcast cross attention" do.

Files: ``<name>.onnx`` (the graph), ``<name>.onnx.data`` (all weights), ``<name>.weights.json``. They are
written into a partial folder beside the target and moved into place once the ONNX checker passed, the ONNX
last, so a reader never sees a half-written export.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ExportError, TrtError
from ..model.families import CONTROL_PREFIX, Family, ResidualPoint
from ..model.profiles import CONTEXT_PER_CHUNK, PIXEL_GRID, UnetCall
from ..store.engine_store import partial_path, remove_if_empty
from . import graph_cache as kept_graphs
from .attention_upcast import upcast_attention_scores
from .controlnet_export import ControlNetReady

if TYPE_CHECKING:
    import onnx

Progress = Callable[[str, float], None]

WEIGHT_MAP_FORMAT = "sd-webui-tensorrt/weight-map"
_DTYPES = {torch.float16: "float16", torch.float32: "float32"}


@dataclass(frozen=True)
class ExportReport:
    """What an export produced and how long it took."""

    path: Path
    seconds: float
    onnx_bytes: int
    """The ONNX file plus its weight data file."""
    opset: int
    dtype: str
    weight_map: Path
    converted_copy: bool = False
    """True when the module was not already in ``dtype`` on ``device`` and a converted copy was exported."""
    controlnet: tuple[ResidualPoint, ...] = ()
    """The ControlNet residual inputs of a ControlNet-ready export, in input order; empty for a plain one."""
    reused_graph: bool = False
    """True when the traced graph of an earlier export was reused and only the weights were written."""


@dataclass(frozen=True)
class WeightRef:
    """Where an ONNX initializer comes from: a ``state_dict`` entry, cast to ``dtype``, of this ``shape``."""

    key: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ParityRow:
    """ONNX Runtime against PyTorch for one call shape."""

    call: UnetCall
    rel_error: float
    """‖onnx − torch‖ / ‖torch‖"""
    max_abs: float
    finite: bool


def weight_map_path(onnx_path: Path) -> Path:
    return Path(onnx_path).with_name(Path(onnx_path).stem + ".weights.json")


def data_path(onnx_path: Path) -> Path:
    return Path(onnx_path).with_name(Path(onnx_path).name + ".data")


def export_onnx(unet: torch.nn.Module, family: Family, path: Path, *,
                dtype: torch.dtype = torch.float16, device: torch.device | str | None = None,
                progress: Progress | None = None, opset: int = 17, controlnet: bool = False,
                graph_cache: Path | None = None) -> ExportReport:
    """Export ``unet`` to ``path`` for ``family``, with every profile axis dynamic, all inputs in ``dtype``;
    with ``controlnet``, ControlNet-ready (one residual input per point of ``family.controlnet_residuals``).

    ``graph_cache``: a folder where the traced graph is kept (:mod:`.graph_cache`); an export whose module
    would trace to a kept graph reuses it and only writes its weights.

    The caller's module is left as it was (weights, dtype, device, train/eval mode); it is only copied when
    its dtype or device differs from the wanted one and a trace is needed. Any failure raises
    :class:`ExportError` naming the cause and leaves no file behind; an exception raised by ``progress`` (a
    cancel) is re-raised unchanged.
    """
    if dtype not in _DTYPES:
        raise ExportError(f"ONNX export supports float16 and float32, not {dtype}")
    path = Path(path)
    start = time.perf_counter()
    work = partial_path(path)
    made_folder = not path.parent.exists()
    stage = "preparing"
    from_progress: list[BaseException] = []

    def report(name: str, fraction: float) -> None:
        nonlocal stage
        stage = name
        if progress is not None:
            try:
                progress(name, fraction)
            except BaseException as e:
                from_progress.append(e)
                raise

    try:
        import onnx

        report("preparing the UNet for export", 0.0)
        points = family.controlnet_residuals(unet) if controlnet else ()
        want = _device(unet, device)
        work.mkdir(parents=True)
        fingerprint = kept_graphs.trace_fingerprint(unet, family, dtype, opset, points, want) if graph_cache else ""
        proto = kept_graphs.load(graph_cache, fingerprint) if graph_cache else None
        reused, converted = proto is not None, False
        if proto is None:
            report("tracing the UNet", 0.05)
            proto, converted = _traced_graph(unet, family, points, work, dtype, want, opset)
            if graph_cache:
                kept_graphs.keep(graph_cache, fingerprint, proto)
        else:
            report("reusing the traced graph of an earlier export of this kind", 0.05)
        size = _write_weights(proto, unet.state_dict(), want, dtype, work / path.name,
                              lambda f: report("writing the weights", 0.6 + 0.3 * f))
        report("checking the ONNX", 0.9)
        onnx.checker.check_model(str(work / path.name))
        weights = _weight_map(proto)
        (work / weight_map_path(path).name).write_text(json.dumps(
            {"format": WEIGHT_MAP_FORMAT, "version": 1, "onnx": path.name, "dtype": _DTYPES[dtype],
             "weights": {name: {"key": w.key, "dtype": w.dtype, "shape": list(w.shape)}
                         for name, w in weights.items()}}, indent=1), encoding="utf-8")
        report("moving the export into place", 1.0)  # the last chance to cancel: nothing is in place yet
        _move_into_place(work, path)
    except BaseException as e:
        if from_progress or isinstance(e, TrtError) or not isinstance(e, Exception):
            raise
        raise ExportError(f"exporting the {family.label} UNet to ONNX failed while {stage}: "
                          f"{type(e).__name__}: {e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if made_folder and not path.exists():  # failed or cancelled: leave no empty export folder either
            remove_if_empty(path.parent)
    return ExportReport(path=path, seconds=time.perf_counter() - start, onnx_bytes=size,
                        opset=max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                        dtype=_DTYPES[dtype], weight_map=weight_map_path(path), converted_copy=converted,
                        controlnet=points, reused_graph=reused)


def _device(unet: torch.nn.Module, device: torch.device | str | None) -> torch.device:
    """Where the export runs: ``device`` ("cuda" made "cuda:0"), else where the module's weights are."""
    return torch.empty(0, device=device).device if device is not None else next(unet.parameters()).device


def _traced_graph(unet: torch.nn.Module, family: Family, points: tuple[ResidualPoint, ...], work: Path,
                  dtype: torch.dtype, device: torch.device, opset: int) -> tuple[onnx.ModelProto, bool]:
    """Trace ``unet`` without its weights and post-process the graph: weights as initializers without data,
    fp32 attention scores where the family needs them. Also whether a converted copy was traced."""
    import onnx

    model, converted = _module_for_export(unet, dtype, device)
    traced = work / "traced.onnx"
    with _eval_mode(model), torch.no_grad():
        _torch_export(model, family, points, traced, dtype, device, opset)
    del model  # a converted copy is not needed any more: its weights are written from the caller's module
    proto = onnx.load(str(traced))
    traced.unlink()
    if family.attention_upcast and dtype == torch.float16:
        upcast_attention_scores(proto.graph)
    _inputs_to_initializers(proto.graph, family.engine_input_names(points))
    return proto, converted


def _module_for_export(unet: torch.nn.Module, dtype: torch.dtype,
                       device: torch.device) -> tuple[torch.nn.Module, bool]:
    """The module itself when it already has ``dtype`` and ``device``; else a copy made directly in them.

    The copy never holds a second full-precision set of weights: parameters and buffers are converted one by
    one as the deep copy reaches them.
    """
    tensors = [*unet.parameters(), *unet.buffers()]
    if all(t.device == device and (t.dtype == dtype or not t.is_floating_point()) for t in tensors):
        return unet, False
    memo: dict[int, Any] = {id(p): torch.nn.Parameter(_converted(p, device, dtype), requires_grad=False)
                            for p in unet.parameters()}
    memo.update({id(b): _converted(b, device, dtype) for b in unet.buffers()})
    return copy.deepcopy(unet, memo), True


def _converted(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as the export holds it: on ``device``, floats in ``dtype``; one conversion for the traced copy and
    for the written weights, so both hold the same values."""
    return t.detach().to(device, dtype if t.is_floating_point() else t.dtype)


@contextmanager
def _eval_mode(module: torch.nn.Module):
    """Eval mode for the export; every submodule's own train/eval flag is put back afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _torch_export(model: torch.nn.Module, family: Family, points: tuple[ResidualPoint, ...], out: Path,
                  dtype: torch.dtype, device: torch.device, opset: int) -> None:
    """Trace at the smallest shape engines take (one row, 64x64 px, 77 context rows) and write ``out``.

    Every axis a profile varies is dynamic and nothing in the graph depends on the traced size, while the
    tracer keeps every activation alive: the smallest shape keeps export memory at the weights plus little
    (measured on an H100, fp16, traced at the default presets' opt size: SDXL peak 5.6 GiB of which 4.9 GiB
    weights; see the README's performance section for the numbers at this size).
    """
    inputs = family.example_inputs(1, PIXEL_GRID, PIXEL_GRID, CONTEXT_PER_CHUNK, dtype=dtype, device=device,
                                   controlnet=points)
    names = family.engine_input_names(points)
    if points:
        model = ControlNetReady(model, len(points), "y" in family.input_names)
    with warnings.catch_warnings(), _shape_inference_without_weights():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # one per traced Python branch
        warnings.simplefilter("ignore", DeprecationWarning)  # for choosing this exporter
        torch.onnx.export(
            model, tuple(inputs[n] for n in names), str(out), dynamo=False,
            input_names=list(names), output_names=[family.output_name],
            dynamic_axes=family.dynamic_axes(points), opset_version=opset,
            do_constant_folding=False, export_params=False, keep_initializers_as_inputs=True)


@contextmanager
def _shape_inference_without_weights() -> Iterator[None]:
    """The exporter's whole-graph shape inference, given no weight values.

    The TorchScript exporter runs ONNX shape inference over the whole graph twice, each time building an ONNX
    model that holds a copy of every weight it is given, although shapes need none: the weights are graph
    inputs with their shapes. Measured on real-size UNets (CPU, fp32): SD 1.5 export 23.0 s -> 13.2 s, SDXL
    37 s of 52 s spent in those two passes; the exported files are byte for byte the same (tests compare
    them). The pass is private to torch: where it is missing, the export runs as it is.
    """
    name = "_jit_pass_onnx_graph_shape_type_inference"
    original = getattr(torch._C, name, None)
    if original is None:
        yield
        return
    setattr(torch._C, name, lambda graph, params, opset: original(graph, {}, opset))
    try:
        yield
    finally:
        setattr(torch._C, name, original)


def _inputs_to_initializers(graph: onnx.GraphProto, input_names: Sequence[str]) -> None:
    """Turn the weight inputs of a graph traced without its parameters into initializers (names, dims and
    dtypes, no data yet), so that the graph inputs are exactly the family's."""
    import onnx

    weights = [i for i in graph.input if i.name not in input_names]
    kept = [i for i in graph.input if i.name in input_names]
    del graph.input[:]
    graph.input.extend(kept)
    for value in weights:
        tensor = value.type.tensor_type
        graph.initializer.append(onnx.TensorProto(
            name=value.name, data_type=tensor.elem_type, dims=[d.dim_value for d in tensor.shape.dim],
            data_location=onnx.TensorProto.EXTERNAL))


def _write_weights(proto: onnx.ModelProto, state: Mapping[str, torch.Tensor], device: torch.device,
                   dtype: torch.dtype, out: Path, progress: Callable[[float], None]) -> int:
    """Write every initializer's tensor from ``state`` into ``out.data``, in graph order, then the graph into
    ``out``; returns the bytes of both. One tensor at a time is on the host."""
    import onnx

    data_name = data_path(out).name
    inits = proto.graph.initializer
    with open(out.parent / data_name, "wb") as data:
        for index, tensor in enumerate(inits):
            if tensor.name not in state:
                raise ExportError(f"the traced graph has weight {tensor.name}, which the UNet does not have")
            array = _converted(state[tensor.name], device, dtype).cpu().contiguous().numpy()
            want = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            if array.dtype != want or tuple(array.shape) != tuple(tensor.dims):
                raise ExportError(f"weight {tensor.name} is {array.dtype} {tuple(array.shape)}, the traced graph "
                                  f"has {np.dtype(want)} {tuple(tensor.dims)}")
            offset = data.tell()
            data.write(array.data)
            del tensor.external_data[:]
            for key, value in (("location", data_name), ("offset", offset), ("length", array.nbytes)):
                tensor.external_data.add(key=key, value=str(value))
            if index % 64 == 0:
                progress(index / len(inits))
        data.flush()
        os.fsync(data.fileno())
        size = data.tell()
    onnx.save(proto, str(out))
    return size + out.stat().st_size


def _weight_map(proto: onnx.ModelProto) -> dict[str, WeightRef]:
    """Initializer -> parameter, from the names the exporter gave (see the module docstring); every one was
    checked against the module's ``state_dict`` (name, shape, dtype) when :func:`_write_weights` wrote it."""
    import onnx

    return {t.name: WeightRef(t.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).name,
                              tuple(t.dims)) for t in proto.graph.initializer}


def _move_into_place(work: Path, path: Path) -> None:
    """Rename the finished files next to ``path``, the ONNX last, so a reader never sees a partial export."""
    for final in (weight_map_path(path), data_path(path), path):
        os.replace(work / final.name, final)


def residual_inputs(onnx_path: Path) -> tuple[ResidualPoint, ...]:
    """The ControlNet residual inputs of an export, read off its graph (empty for a plain export): channels
    from the static dim, downscale from the dim names :meth:`Family.dynamic_axes` gave them."""
    import onnx

    points = []
    for tensor in onnx.load(str(onnx_path), load_external_data=False).graph.input:
        if tensor.name.startswith(CONTROL_PREFIX):
            _, channels, height, _ = tensor.type.tensor_type.shape.dim
            points.append(ResidualPoint(channels.dim_value, int(height.dim_param.rsplit("_", 1)[1])))
    return tuple(points)


def load_weight_map(onnx_path: Path) -> dict[str, WeightRef]:
    """The weight map written beside ``onnx_path`` at export: initializer name -> :class:`WeightRef`."""
    file = weight_map_path(onnx_path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if data.get("format") != WEIGHT_MAP_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}")
        return {name: WeightRef(w["key"], w["dtype"], tuple(w["shape"])) for name, w in data["weights"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportError(f"cannot read the weight map {file.name} (re-export the UNet to recreate it): {e}") from e


def initializer_values(unet_or_state_dict: torch.nn.Module | Mapping[str, torch.Tensor],
                       weight_map: Mapping[str, WeightRef],
                       names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Arrays exactly as the ONNX initializers would hold them for these weights (all, or only ``names``).

    To run the ONNX with them on ONNX Runtime (a refit stand-in), turn its constant folding off: it folds the
    weight Transposes with the file's own values before session initializer overrides apply
    (:class:`trt_lib.engines.onnx_runtime.OnnxRuntimeRunner` does).
    """
    state = (unet_or_state_dict.state_dict() if isinstance(unet_or_state_dict, torch.nn.Module)
             else unet_or_state_dict)
    out = {}
    for name in weight_map if names is None else names:
        ref = weight_map[name]
        tensor = state[ref.key].detach()
        if tuple(tensor.shape) != ref.shape:
            raise ExportError(f"weight {ref.key} has shape {tuple(tensor.shape)}, the engine expects {ref.shape}")
        out[name] = tensor.to(getattr(torch, ref.dtype)).cpu().numpy()
    return out


def parity(onnx_path: Path, unet: torch.nn.Module, family: Family, calls: Sequence[UnetCall], *,
           dtype: torch.dtype) -> list[ParityRow]:
    """Run the ONNX on ONNX Runtime (CPU) and ``unet`` in PyTorch on the same random inputs, per call shape.

    ``unet`` is the reference: pass it in float32. ONNX inputs are cast to ``dtype``, the export dtype.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    first = next(unet.parameters())
    rows = []
    for i, call in enumerate(calls):
        inputs = family.example_inputs(call.batch, call.height, call.width, call.context_len, seed=i)
        with torch.no_grad(), _eval_mode(unet):
            ref = unet(*(inputs[n].to(first.device, first.dtype) for n in family.input_names)).float().cpu()
        (out,) = session.run([family.output_name],
                             {n: inputs[n].to(dtype).numpy() for n in family.input_names})
        got = torch.from_numpy(out).float()
        diff = got - ref
        rows.append(ParityRow(call, float(diff.norm() / ref.norm()), float(diff.abs().max()),
                              bool(torch.isfinite(got).all())))
    return rows
