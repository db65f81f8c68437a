"""A second checkpoint of the same kind reuses the traced graph and writes only its weights: the files equal a
fresh export byte for byte, and anything that would change the trace changes the fingerprint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from trt_lib.export import graph_cache
from trt_lib.export import onnx_export as export_mod
from trt_lib.export.onnx_export import export_onnx, parity
from trt_lib.jobs.pipeline import BuildRequest, export_stage, graph_cache_folder
from trt_lib.model.families import ResidualPoint, get_family
from trt_lib.model.profiles import UnetCall
from trt_lib.model.tiny_unets import make_unet
from trt_lib.store.engine_store import EngineStore

FILES = ("unet.onnx", "unet.onnx.data", "unet.weights.json")


def files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in FILES}


def no_trace(*args, **kwargs):
    raise AssertionError("traced again")


@pytest.mark.parametrize(("name", "dtype", "controlnet"), [
    ("sd1", torch.float32, False),
    ("sd2", torch.float16, False),   # fp32 attention scores: post-processing is part of the kept graph
    ("sdxl", torch.float32, True),   # ControlNet residual inputs
])
def test_second_checkpoint_equals_a_fresh_export(name, dtype, controlnet, tmp_path, monkeypatch):
    family, cache = get_family(name), tmp_path / "graphs"
    first = export_onnx(make_unet(family, seed=0), family, tmp_path / "a" / "unet.onnx", dtype=dtype,
                        controlnet=controlnet, graph_cache=cache)
    second_unet = make_unet(family, seed=1)
    fresh = export_onnx(second_unet, family, tmp_path / "fresh" / "unet.onnx", dtype=dtype, controlnet=controlnet)
    with monkeypatch.context() as patch:
        patch.setattr(export_mod, "_torch_export", no_trace)
        second = export_onnx(second_unet, family, tmp_path / "b" / "unet.onnx", dtype=dtype,
                             controlnet=controlnet, graph_cache=cache)

    assert not first.reused_graph and second.reused_graph and not fresh.reused_graph
    assert files(tmp_path / "b") == files(tmp_path / "fresh")
    # the two checkpoints' graphs are equal apart from the weight data (offsets included)
    assert (tmp_path / "a" / "unet.onnx").read_bytes() == (tmp_path / "b" / "unet.onnx").read_bytes()
    assert (tmp_path / "a" / "unet.onnx.data").read_bytes() != (tmp_path / "b" / "unet.onnx.data").read_bytes()
    if not controlnet:
        (row,) = parity(second.path, second_unet.float(), family, [UnetCall(2, 8, 8, 77)], dtype=dtype)
        assert row.finite and row.rel_error < (1e-2 if dtype == torch.float16 else 1e-4)


def _patch_a_forward(unet):
    unet.mid_block.forward = lambda *a, **k: None


def _change_a_setting(unet):
    unet.mid_block.attentions[0].transformer_blocks[0].only_cross_attention = True


def _patch_a_global(unet, monkeypatch):
    module = sys.modules[type(unet.mid_block.resnets[0]).__module__]
    name = next(n for n, v in vars(module).items() if callable(v) and getattr(v, "__module__", "") == module.__name__
                and not isinstance(v, type))
    monkeypatch.setattr(module, name, lambda *a, **k: None)


CHANGES = {
    "dtype": lambda fp, unet, mp: fp(dtype=torch.float16),
    "opset": lambda fp, unet, mp: fp(opset=18),
    "ControlNet inputs": lambda fp, unet, mp: fp(points=(ResidualPoint(32, 1),)),
    "device": lambda fp, unet, mp: fp(device=torch.device("cuda")),
    "family": lambda fp, unet, mp: fp(family=get_family("sd1-inpaint")),
    "a forward patched on an instance": lambda fp, unet, mp: (_patch_a_forward(unet), fp())[1],
    "a module setting": lambda fp, unet, mp: (_change_a_setting(unet), fp())[1],
    "a module-level function patched": lambda fp, unet, mp: (_patch_a_global(unet, mp), fp())[1],
    "other weight shapes": lambda fp, unet, mp: fp(unet=make_unet("sd2")),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_what_changes_the_trace_changes_the_fingerprint(change, monkeypatch):
    base = make_unet("sd1", seed=0)

    def fingerprint(unet=None, family=None, dtype=torch.float32, opset=17, points=(), device=None):
        return graph_cache.trace_fingerprint(unet or base, family or get_family("sd1"), dtype, opset, points,
                                             device or torch.device("cpu"))

    before = fingerprint()
    assert fingerprint(unet=make_unet("sd1", seed=3)) == before  # other weights, same trace
    assert CHANGES[change](fingerprint, base, monkeypatch) != before


def test_autocast_changes_the_fingerprint():
    unet, family = make_unet("sd1"), get_family("sd1")
    plain = graph_cache.trace_fingerprint(unet, family, torch.float32, 17, (), torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert graph_cache.trace_fingerprint(unet, family, torch.float32, 17, (), torch.device("cpu")) != plain


def test_damaged_kept_graph_is_traced_again(tmp_path):
    family, cache = get_family("sd1"), tmp_path / "graphs"
    export_onnx(make_unet(family), family, tmp_path / "a" / "unet.onnx", dtype=torch.float32, graph_cache=cache)
    (kept,) = cache.glob("*.graph.pb")
    kept.write_bytes(b"\x00garbage")
    again = export_onnx(make_unet(family, seed=1), family, tmp_path / "b" / "unet.onnx", dtype=torch.float32,
                        graph_cache=cache)
    assert not again.reused_graph
    onnx.checker.check_model(str(again.path))
    assert graph_cache.load(cache, kept.name.removesuffix(".graph.pb")) is not None  # written again


def test_keeps_the_most_recently_used_graphs(tmp_path):
    proto = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    for i in range(graph_cache.KEEP + 2):
        graph_cache.keep(tmp_path, f"f{i}", proto)
        path = tmp_path / f"f{i}.graph.pb"
        if path.exists():
            os.utime(path, (1000 + i, 1000 + i))
    kept = sorted(p.name.removesuffix(".graph.pb") for p in tmp_path.glob("*.graph.pb"))
    assert len(kept) == graph_cache.KEEP and "f0" not in kept and f"f{graph_cache.KEEP + 1}" in kept


def test_pipeline_second_checkpoint_writes_only_weights(tmp_path):
    """Through the store: a second checkpoint of the family reuses the first one's traced graph."""
    family, store = get_family("sd1"), EngineStore(tmp_path / "engines")
    stages: list[str] = []
    for checkpoint, seed in (("first", 0), ("second", 1)):
        request = BuildRequest(checkpoint, f"hash-{checkpoint}", family, [family.default_preset.profile],
                               backend="tensorrt_rtx", compute_capability="8.9", dtype=torch.float32)
        export_stage(make_unet(family, seed=seed), request, store, progress=lambda s, f: stages.append(s))
    assert len(list(graph_cache_folder(store).glob("*.graph.pb"))) == 1
    done = [s for s in stages if " in " in s and s.startswith("export: ") and "s" in s.rsplit(" ", 1)[-1]]
    assert done[0].startswith("export: exported in") and done[1].startswith("export: weights written into")


def _forward_with_constants(x):
    return x * 3.5 + len("a constant only this function holds")


def test_code_hash_does_not_depend_on_reference_counts():
    """The same code hashes the same while other objects refer to its constants (``marshal`` output does not:
    in the real WebUI two exports of one process gave the same forward two hashes)."""
    before = graph_cache._code_id(_forward_with_constants)
    held = [*_forward_with_constants.__code__.co_consts, *_forward_with_constants.__code__.co_names] * 3
    assert graph_cache._code_id(_forward_with_constants) == before and held


def test_fingerprint_is_the_same_in_other_processes():
    """Kept graphs outlive the WebUI process: the fingerprint must not depend on the string hash seed."""
    script = ("import torch; from trt_lib.export.graph_cache import trace_fingerprint; "
              "from trt_lib.model.families import get_family; from trt_lib.model.tiny_unets import make_unet; "
              "print(trace_fingerprint(make_unet('sd1'), get_family('sd1'), torch.float32, 17, (), "
              "torch.device('cpu')))")
    root = Path(__file__).resolve().parent.parent
    found = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root,
                            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}).stdout.strip()
             for seed in ("1", "2")}
    here = graph_cache.trace_fingerprint(make_unet("sd1"), get_family("sd1"), torch.float32, 17, (),
                                         torch.device("cpu"))
    assert found == {here}
