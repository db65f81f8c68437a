"""Keep the traced ONNX graph of an export, so that a second checkpoint of the same kind only writes weights.

Tracing a UNet and converting it to ONNX is most of an export's time, and nothing of it depends on the weight
values: the graph depends on the module's code, its configuration, the shapes and dtypes of its weights, the
export settings and the libraries doing the trace. :func:`trace_fingerprint` hashes exactly those, read off
the module as it is at export time (inside the WebUI's patches, autocast and the LoRA restore), so two
checkpoints get the same fingerprint only when tracing them would record the same graph:

- every submodule: its name, class, the code of the ``forward`` it would run (an instance-level patch
  included) and its plain configuration attributes (ints, floats, strings, flags, dtypes, tuples of them);
- the functions, objects and plain values at module level of every module that defines one of those classes
  or forwards, and of ``torch.nn.functional`` (the WebUI patches such globals, e.g. ``timestep_embedding``;
  ldm reads ``_ATTN_PRECISION`` from one);
- every ``state_dict`` entry's name, shape and dtype (floats as exported);
- autocast on the export device, family, dtype, opset, ControlNet residual points, torch and onnx versions,
  and the source of this project's export modules.

The graph is kept after its post-processing (fp32 attention scores, weights moved from inputs to
initializers), without weight data: a ``GraphProto`` whose initializers have names, dims and dtypes only.
"""

from __future__ import annotations

import hashlib
import os
import sys
import types
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..store.engine_store import atomic_write_bytes

if TYPE_CHECKING:
    import onnx

    from ..model.families import Family, ResidualPoint

KEEP = 8
"""Graphs kept per store: a graph is a few MB; the oldest go first."""
_PLAIN = (bool, int, float, str, type(None), torch.dtype)
_EXPORT_SOURCES = ("export/onnx_export.py", "export/graph_cache.py", "export/controlnet_export.py",
                   "export/attention_upcast.py", "model/families.py")
"""This project's sources that shape a traced graph, relative to ``trt_lib``."""


def trace_fingerprint(unet: torch.nn.Module, family: Family, dtype: torch.dtype, opset: int,
                      points: tuple[ResidualPoint, ...], device: torch.device) -> str:
    """A hash that is equal for two modules exactly when tracing them would record the same ONNX graph."""
    import onnx

    digest = hashlib.sha256()

    def add(*parts: Any) -> None:
        digest.update(repr(parts).encode())
        digest.update(b"\0")

    here = Path(__file__).resolve().parents[1]
    add(torch.__version__, onnx.__version__, family.name, str(dtype), opset, tuple(points), device.type)
    for name in _EXPORT_SOURCES:
        add(name, hashlib.sha256((here / name).read_bytes()).hexdigest())
    if torch.amp.is_autocast_available(device.type):
        add("autocast", torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
    defining: dict[str, types.ModuleType] = {"torch.nn.functional": torch.nn.functional}
    for name, module in unet.named_modules():
        forward = module.__dict__.get("forward", type(module).forward)
        add(name, _qualname(type(module)), _code_id(forward), _config(module))
        for module_name in (type(module).__module__, getattr(getattr(forward, "__func__", forward), "__module__", "")):
            found = sys.modules.get(module_name or "")
            if found is not None:
                defining.setdefault(module_name, found)
    for module_name in sorted(defining):
        add(module_name, *_globals_id(vars(defining[module_name])))
    for key, tensor in unet.state_dict().items():
        add(key, tuple(tensor.shape), str(dtype if tensor.is_floating_point() else tensor.dtype))
    return digest.hexdigest()[:24]


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _code_id(fn: Any) -> str:
    """What a callable runs: its code (hashed), else its type; bound methods and partials are looked through."""
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is not None:
        return f"{_qualname(fn)}:{_code_digest(code)}"
    inner = getattr(fn, "func", None)  # functools.partial
    return f"{_qualname(type(fn))}({_code_id(inner)})" if inner is not None else _qualname(type(fn))


def _code_digest(code: types.CodeType) -> str:
    """A hash of what ``code`` does, equal in every process (``marshal`` is not: it flags objects by their
    reference counts; frozenset constants iterate in an order that depends on the string hash seed)."""

    def const(c: Any) -> str:
        if isinstance(c, types.CodeType):
            return _code_digest(c)
        if isinstance(c, frozenset):
            return repr(sorted(map(const, c)))
        if isinstance(c, tuple):
            return "(" + ",".join(map(const, c)) + ")"
        return repr(c)

    parts = (code.co_code, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
             [const(c) for c in code.co_consts])
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _config(module: torch.nn.Module) -> tuple[tuple[str, str], ...]:
    def plain(value: Any) -> bool:
        return isinstance(value, _PLAIN) or (isinstance(value, (tuple, list)) and all(map(plain, value)))

    return tuple((k, repr(v)) for k, v in sorted(vars(module).items())
                 if not k.startswith("_") and k != "training" and plain(v))


def _globals_id(names: dict[str, Any]) -> Iterable[tuple[str, str]]:
    for name in sorted(names):
        value = names[name]
        if name.startswith("__") or isinstance(value, (types.ModuleType, type)):
            continue  # imports and classes: classes in use are fingerprinted as modules
        if callable(value):
            yield name, _code_id(value)
        elif not isinstance(value, _PLAIN):
            yield name, _qualname(type(value))
        else:
            yield name, repr(value)


def load(folder: Path, fingerprint: str) -> onnx.ModelProto | None:
    """The kept graph for ``fingerprint``, or None (none kept, or unreadable: then it is traced again)."""
    import onnx

    path = Path(folder) / f"{fingerprint}.graph.pb"
    try:
        proto = onnx.load_model_from_string(path.read_bytes())
    except Exception:  # missing, or damaged: a trace makes it again  # noqa: BLE001
        return None
    os.utime(path)  # most recently used: kept longest
    return proto


def keep(folder: Path, fingerprint: str, proto: onnx.ModelProto) -> None:
    """Keep ``proto`` (no weight data in it) for later exports; the least recently used beyond :data:`KEEP`
    are dropped. A failure to write is not an export failure: the next export traces again."""
    folder = Path(folder)
    try:
        atomic_write_bytes(folder / f"{fingerprint}.graph.pb", proto.SerializeToString())
        kept = sorted(folder.glob("*.graph.pb"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[KEEP:]:
            old.unlink(missing_ok=True)
    except OSError as e:
        print(f"[TensorRT] could not keep the traced graph in {folder}: {e}", file=sys.stderr)
