"""ONNX export of UNets with the WebUI's call signature: graph, parity with PyTorch, safety, weight map."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from trt_lib.errors import BuildCancelled, ExportError
from trt_lib.export import onnx_export as export_mod
from trt_lib.export.onnx_export import ExportReport, export_onnx, initializer_values, load_weight_map, parity
from trt_lib.model.families import detect_family, get_family, load_families, unet_traits
from trt_lib.model.profiles import UnetCall
from trt_lib.model.tiny_unets import WebuiUnet, make_unet, unet_config

FAMILIES = sorted(load_families())
CALLS = (
    UnetCall(4, 8, 8, 77),    # batch 4: two images, cond and uncond rows
    UnetCall(2, 8, 8, 154),   # a prompt over 75 tokens
    UnetCall(1, 16, 8, 77),   # non-square, and a size other than the traced one
)


def export(unet: torch.nn.Module, path: Path, family: str = "sd1", **kwargs) -> ExportReport:
    """Export traced at the small profile (fast on a CPU), in fp32 unless told otherwise."""
    kwargs.setdefault("dtype", torch.float32)
    return export_onnx(unet, get_family(family), path, **kwargs)


def state_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def print_parity(name: str, rows: list[export_mod.ParityRow]) -> None:
    for r in rows:
        print(f"{name:13} {str(r.call):55} rel {r.rel_error:.1e}  max abs {r.max_abs:.1e}  finite {r.finite}")


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_unet_is_detected_as_its_family(name, tiny_unet):
    assert detect_family(unet_traits(tiny_unet(name))).name == name


def test_tiny_unet_is_deterministic_in_its_seed():
    a, b, c = make_unet("sd1", seed=3), make_unet("sd1", seed=3), make_unet("sd1", seed=4)
    assert same_state(a.state_dict(), b.state_dict())
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)


@pytest.mark.parametrize(("name", "params"), [("sd1", 859_520_964), ("sd2", 865_910_724), ("sdxl", 2_567_463_684)])
def test_real_size_configs_match_the_released_unets(name, params):
    """Parameter counts of the released checkpoints' UNets; built on the meta device, so nothing is allocated."""
    with torch.device("meta"):
        unet = WebuiUnet(**unet_config(get_family(name), tiny=False))
    assert sum(p.numel() for p in unet.parameters()) == params


@pytest.mark.parametrize("name", FAMILIES)
def test_fp32_export_graph_and_parity(name, tiny_unet, exported_onnx):
    family = get_family(name)
    path = exported_onnx(name, torch.float32)
    onnx.checker.check_model(str(path))
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = {n.op_type for n in model.graph.node}
    assert {"LayerNormalization", "Softmax", "MatMul"} <= ops

    axes = family.dynamic_axes()
    consts = family.constants()
    graph_tensors = {t.name: t for t in [*model.graph.input, *model.graph.output]}
    assert [t.name for t in model.graph.input] == list(family.input_names)
    assert [t.name for t in model.graph.output] == [family.output_name]
    for tensor_name, symbols in {**family.inputs, **family.outputs}.items():
        dims = graph_tensors[tensor_name].type.tensor_type.shape.dim
        assert len(dims) == len(symbols)
        for i, (dim, symbol) in enumerate(zip(dims, symbols)):
            if i in axes[tensor_name]:
                assert dim.dim_param == axes[tensor_name][i]
            else:
                assert dim.dim_value == consts[symbol], (tensor_name, symbol)

    rows = parity(path, tiny_unet(name), family, CALLS, dtype=torch.float32)
    print_parity(name, rows)
    assert all(r.finite and r.rel_error <= 1e-4 for r in rows), rows


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_fp16_export_parity(name, tiny_unet, exported_onnx):
    path = exported_onnx(name, torch.float16)
    model = onnx.load(str(path))
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in model.graph.input)
    assert {t.data_type for t in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    rows = parity(path, tiny_unet(name), get_family(name), CALLS, dtype=torch.float16)
    print_parity(f"{name} fp16", rows)
    assert all(r.finite and r.rel_error <= 1e-2 for r in rows), rows


def test_callers_module_is_left_as_it_was(tmp_path):
    """fp32 module, fp16 export: a converted copy is exported; the module keeps weights, dtype and modes."""
    unet = make_unet("sd1").train()
    unet.mid_block.eval()
    before = state_copy(unet)
    modes = [m.training for m in unet.modules()]
    processors = {k: type(v) for k, v in unet.attn_processors.items()}
    report = export(unet, tmp_path / "unet.onnx", dtype=torch.float16)
    assert report.converted_copy and report.dtype == "float16"
    assert same_state(state_copy(unet), before)
    assert [m.training for m in unet.modules()] == modes
    assert {k: type(v) for k, v in unet.attn_processors.items()} == processors


def test_module_in_export_dtype_is_not_copied(tmp_path, monkeypatch):
    """The WebUI's fp16 UNet is exported as is: a second copy of SDXL's weights would not fit on many GPUs."""
    unet = make_unet("sdxl", dtype=torch.float16).train()
    unet.up_blocks[0].eval()
    before = state_copy(unet)
    modes = [m.training for m in unet.modules()]

    def no_copy(*args, **kwargs):
        raise AssertionError("the module was copied")

    monkeypatch.setattr(export_mod.copy, "deepcopy", no_copy)
    report = export(unet, tmp_path / "unet.onnx", "sdxl", dtype=torch.float16)
    assert not report.converted_copy and [m.training for m in unet.modules()] == modes
    assert same_state(state_copy(unet), before)


def test_report_and_progress(tmp_path):
    seen: list[tuple[str, float]] = []
    path = tmp_path / "unet.onnx"
    report = export(make_unet("sd1"), path, progress=lambda stage, f: seen.append((stage, f)))
    assert report.path == path and report.opset == 17 and not report.reused_graph
    assert report.onnx_bytes == path.stat().st_size + (tmp_path / "unet.onnx.data").stat().st_size
    assert report.seconds > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx", "unet.onnx.data", "unet.weights.json"]
    fractions = [f for _, f in seen]
    assert len(seen) >= 3 and fractions == sorted(fractions) and fractions[-1] == 1.0


@pytest.mark.catalogue("interruptions")
@pytest.mark.parametrize("cancel_at", [0, 2, -1])
def test_cancel_leaves_nothing(tmp_path, cancel_at):
    calls: list[str] = []

    def progress(stage: str, fraction: float) -> None:
        calls.append(stage)
        if len(calls) - 1 == cancel_at or (cancel_at == -1 and fraction == 1.0):
            raise BuildCancelled("cancelled by the user")

    with pytest.raises(BuildCancelled):
        export(make_unet("sd1"), tmp_path / "key" / "unet.onnx", progress=progress)
    assert list(tmp_path.iterdir()) == []  # the export's own folder is gone too


@pytest.mark.catalogue("files")
def test_unwritable_folder_is_an_export_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ExportError, match="preparing"):
        export(make_unet("sd1"), tmp_path / "file" / "unet.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


@pytest.mark.catalogue("files")
def test_failing_module_is_an_export_error(tmp_path):
    unet = make_unet("sd1")

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    unet.mid_block.forward = broken
    with pytest.raises(ExportError, match="tracing.*RuntimeError: CUDA out of memory"):
        export(unet, tmp_path / "unet.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_weight_map_is_exact(dtype, tiny_unet, exported_onnx):
    unet = tiny_unet("sdxl")
    path = exported_onnx("sdxl", dtype)
    weight_map = load_weight_map(path)
    model = onnx.load(str(path))
    assert {w.key for w in weight_map.values()} == set(unet.state_dict())
    values = initializer_values(unet, weight_map)
    for init in model.graph.initializer:
        stored = onnx.numpy_helper.to_array(init)
        assert stored.dtype == values[init.name].dtype and np.array_equal(stored, values[init.name]), init.name
    some = sorted(weight_map)[:3]
    assert initializer_values(unet.state_dict(), weight_map, some).keys() == set(some)


def test_weight_map_refits_to_other_weights(tiny_unet, exported_onnx):
    """Feeding another UNet's initializer values to the exported graph reproduces that UNet (a refit)."""
    family = get_family("sd1")
    path = exported_onnx("sd1", torch.float32)
    other = make_unet(family, seed=7)
    options = ort.SessionOptions()
    # ORT's constant folding reads the file's weights, not overrides (it folds the weight Transposes with them)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    values = {k: ort.OrtValue.ortvalue_from_numpy(v)
              for k, v in initializer_values(other, load_weight_map(path)).items()}
    for name, value in values.items():
        options.add_initializer(name, value)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = family.example_inputs(2, 64, 128, 77)
    (out,) = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        ref = other(*inputs.values())
        base = tiny_unet("sd1")(*inputs.values())
    assert (torch.from_numpy(out) - ref).norm() / ref.norm() < 1e-4
    assert (base - ref).norm() / ref.norm() > 0.1


def test_weights_in_one_data_file_graph_small(tmp_path, tiny_unet):
    """All weights go into one ``.data`` file, in graph order, each once; the ONNX holds only the graph; an
    earlier export of the same name is replaced whole."""
    family = get_family("sd1")
    path = tmp_path / "unet.onnx"
    export(make_unet("sd1", seed=5), path)
    report = export(tiny_unet("sd1"), path)
    data = tmp_path / "unet.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx", "unet.onnx.data", "unet.weights.json"]
    assert report.onnx_bytes == path.stat().st_size + data.stat().st_size
    assert data.stat().st_size == sum(v.numel() * v.element_size() for v in tiny_unet("sd1").state_dict().values())
    graph = onnx.load(str(path), load_external_data=False).graph
    assert all(t.data_location == onnx.TensorProto.EXTERNAL and not t.raw_data for t in graph.initializer)
    offsets = [int(next(e.value for e in t.external_data if e.key == "offset")) for t in graph.initializer]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    onnx.checker.check_model(str(path))
    (row,) = parity(path, tiny_unet("sd1"), family, CALLS[:1], dtype=torch.float32)
    assert row.finite and row.rel_error <= 1e-4


@pytest.mark.parametrize(("name", "dtype", "controlnet"),
                         [("sd2", torch.float16, False), ("sdxl", torch.float32, True)])
def test_shape_inference_gets_no_weights_and_the_files_are_the_same(name, dtype, controlnet, tmp_path, monkeypatch):
    """The exporter's whole-graph shape inference copies every weight it is given; it is given none, and the
    export comes out byte for byte as with them."""
    unet = make_unet(name, dtype=dtype)
    pass_name = "_jit_pass_onnx_graph_shape_type_inference"
    original = getattr(torch._C, pass_name)
    given: list[int] = []

    def spy(graph, params, opset):
        given.append(len(params))
        return original(graph, params, opset)

    monkeypatch.setattr(torch._C, pass_name, spy)
    export(unet, tmp_path / "without" / "unet.onnx", name, dtype=dtype, controlnet=controlnet)
    assert given and set(given) == {0}
    assert getattr(torch._C, pass_name) is spy  # put back afterwards
    monkeypatch.setattr(export_mod, "_shape_inference_without_weights", contextlib.nullcontext)
    export(unet, tmp_path / "with" / "unet.onnx", name, dtype=dtype, controlnet=controlnet)
    assert max(given) > 0
    for file in ("unet.onnx", "unet.onnx.data", "unet.weights.json"):
        assert (tmp_path / "without" / file).read_bytes() == (tmp_path / "with" / file).read_bytes(), file
