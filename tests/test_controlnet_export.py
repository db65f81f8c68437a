"""ControlNet-ready exports: residual points as family data, extra inputs added where ControlNet adds them.

The reference is ControlNet's own UNet loop (tests/ldm_layout.py, after sd-webui-controlnet v1.1.455
scripts/hook.py) run in PyTorch on an ldm-layout view of the tiny UNet; the export runs on ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from ldm_layout import LdmView, controlnet_unet_loop

from trt_lib.errors import FamilyError
from trt_lib.export.onnx_export import export_onnx, load_weight_map
from trt_lib.model.families import ResidualPoint, get_family, load_families, unet_residual_points
from trt_lib.model.profiles import Profile, UnetCall
from trt_lib.model.tiny_unets import WebuiUnet, unet_config

CALLS = (
    UnetCall(2, 8, 8, 77),    # batch 2 (cond and uncond)
    UnetCall(1, 8, 8, 154),   # a prompt over 75 tokens
    UnetCall(1, 16, 8, 77),   # non-square, larger than the traced size
)
FAMILIES = ("sd1", "sd1-inpaint", "sdxl")


@pytest.mark.parametrize("name", sorted(load_families()))
def test_family_residuals_are_the_released_unets_skip_connections(name):
    """The data in models/families matches the real-size UNet's layout (built on the meta device)."""
    family = get_family(name)
    with torch.device("meta"):
        unet = WebuiUnet(**unet_config(family, tiny=False))
    points = unet_residual_points(unet)
    if family.controlnet_unsupported:
        # ControlNet v1.1.455 pops 10 residuals for any SDXL model (hook.py:475-478); the refiner has 13 points.
        assert not family.controlnet_points and len(points) == 13
        with pytest.raises(FamilyError, match="cannot take ControlNet"):
            family.controlnet_residuals(unet)
    else:
        assert family.controlnet_residuals(unet) == points == family.controlnet_points
        assert len(points) == (10 if family.traits.adm_dim else 13)


def test_residual_shapes_follow_the_profile():
    sd1 = get_family("sd1")
    profile = Profile.from_dict({"batch": [1, 1, 4], "height": [512, 512, 768], "width": [256, 512, 1024],
                                 "tokens": [75, 75, 150]})
    shapes = sd1.engine_shapes(profile, sd1.controlnet_points)
    assert list(shapes) == [*sd1.input_names, *(f"control_{i}" for i in range(13))]
    assert shapes["control_0"] == ((1, 320, 64, 32), (2, 320, 64, 64), (8, 320, 96, 128))
    assert shapes["control_6"] == ((1, 640, 16, 8), (2, 640, 16, 16), (8, 640, 24, 32))
    assert shapes["control_12"] == ((1, 1280, 8, 4), (2, 1280, 8, 8), (8, 1280, 12, 16))
    assert sd1.engine_shapes(profile) == {k: v for k, v in shapes.items() if not k.startswith("control_")}


@pytest.fixture(scope="module")
def controlnet_onnx(tiny_unet, tmp_path_factory):
    """``controlnet_onnx(name, layout)``: the tiny UNet (diffusers, or its ldm view) exported ControlNet-ready."""
    folder = tmp_path_factory.mktemp("cn-onnx")
    cache: dict[tuple[str, str], Path] = {}

    def get(name: str, layout: str = "diffusers") -> Path:
        if (name, layout) not in cache:
            unet = tiny_unet(name) if layout == "diffusers" else LdmView(tiny_unet(name))
            path = folder / f"{name}-{layout}" / "unet.onnx"
            report = export_onnx(unet, get_family(name), path, dtype=torch.float32, controlnet=True)
            assert report.controlnet == unet_residual_points(tiny_unet(name))
            cache[name, layout] = report.path
        return cache[name, layout]

    return get


def run_onnx(path: Path, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return torch.from_numpy(session.run(None, {n: feeds[n].numpy() for n in names})[0])


def reference(unet: torch.nn.Module, feeds: dict[str, torch.Tensor], residuals: list) -> torch.Tensor:
    with torch.no_grad():
        return controlnet_unet_loop(LdmView(unet), feeds["sample"], feeds["timesteps"],
                                    feeds["encoder_hidden_states"], feeds.get("y"), residuals)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("layout", ["diffusers", "ldm"])
@pytest.mark.parametrize("name", FAMILIES)
def test_controlnet_ready_onnx_adds_residuals_as_controlnet_does(name, layout, tiny_unet, controlnet_onnx):
    family, unet = get_family(name), tiny_unet(name)
    points = unet_residual_points(unet)
    path = controlnet_onnx(name, layout)
    assert [i.name for i in onnx.load(str(path)).graph.input] == list(family.engine_input_names(points))
    for seed, call in enumerate(CALLS):
        feeds = family.example_inputs(call.batch, call.height, call.width, call.context_len, seed=seed,
                                      controlnet=points)
        residuals = [feeds[f"control_{i}"] for i in range(len(points))]
        want = reference(unet, feeds, residuals)
        plain = reference(unet, feeds, [0.0] * len(points))
        assert rel(plain, want) > 0.05  # the residuals matter at this size
        assert rel(run_onnx(path, feeds), want) < 1e-4, call


@pytest.mark.parametrize("name", FAMILIES)
def test_zero_residuals_give_the_plain_unet_output(name, tiny_unet, controlnet_onnx):
    family, unet = get_family(name), tiny_unet(name)
    points = unet_residual_points(unet)
    feeds = family.example_inputs(2, 64, 128, 154, seed=4, controlnet=points)
    feeds.update({f"control_{i}": torch.zeros_like(feeds[f"control_{i}"]) for i in range(len(points))})
    with torch.no_grad():
        plain = unet(feeds["sample"], feeds["timesteps"], feeds["encoder_hidden_states"], feeds.get("y"))
    assert rel(run_onnx(controlnet_onnx(name), feeds), plain) < 1e-5


def test_controlnet_ready_export_keeps_the_weight_map(tiny_unet, exported_onnx, controlnet_onnx):
    plain, ready = load_weight_map(exported_onnx("sd1")), load_weight_map(controlnet_onnx("sd1"))
    assert ready == plain and len(plain) == len(tiny_unet("sd1").state_dict())


def test_refiner_export_is_refused_before_any_file(tiny_unet, tmp_path):
    with pytest.raises(FamilyError, match="SDXL refiner engines cannot take ControlNet"):
        export_onnx(tiny_unet("sdxl-refiner"), get_family("sdxl-refiner"), tmp_path / "x" / "u.onnx",
                    controlnet=True)
    assert not (tmp_path / "x").exists()


def test_residual_point_data_is_validated():
    assert ResidualPoint.parse([320, 8]) == ResidualPoint(320, 8)
    for bad in ([320, 3], [0, 1], [320.0, 1], [320]):
        with pytest.raises((ValueError, TypeError)):
            ResidualPoint.parse(bad)


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_tensorrt_rtx_builds_a_controlnet_ready_engine(name, tiny_unet, tmp_path):
    """A real TensorRT for RTX build (compute capability 8.9) of the fp16 ControlNet-ready export, with the
    residual inputs in its profile; the profile without them is refused, so the inputs are the engine's."""
    pytest.importorskip("tensorrt_rtx")
    from trt_lib.backends import get_backend
    from trt_lib.errors import BuildError

    family, rtx = get_family(name), get_backend("tensorrt_rtx")
    report = export_onnx(tiny_unet(name), family, tmp_path / "onnx" / "unet.onnx", controlnet=True)
    profile = Profile.from_dict({"batch": [1, 1, 1], "height": [64, 64, 128], "width": [64, 64, 64],
                                 "tokens": [75, 75, 75]})
    built = rtx.build(report.path, tmp_path / "cn.engine", [family.engine_shapes(profile, report.controlnet)],
                      compute_capability="8.9", cache_dir=tmp_path / "cache")
    assert built.engine_bytes == (tmp_path / "cn.engine").stat().st_size > 0
    with pytest.raises(BuildError, match="control_0"):
        rtx.build(report.path, tmp_path / "plain.engine", [family.engine_shapes(profile)],
                  compute_capability="8.9", cache_dir=tmp_path / "cache")


def test_a_family_file_without_controlnet_data_loads_and_refuses_controlnet(tiny_unet):
    import json

    from trt_lib.model.families import FAMILIES_DIR, Family

    data = json.loads((FAMILIES_DIR / "sd1.json").read_text(encoding="utf-8"))
    del data["controlnet"]
    family = Family.from_dict(data)
    assert family.presets and not family.controlnet_points
    with pytest.raises(FamilyError, match="describes no ControlNet residuals"):
        family.controlnet_residuals(tiny_unet("sd1"))
