"""What an export holds after PyTorch jobs with and without prompt LoRAs, in the stand-in with its Lora
extension (which, as the WebUI's, leaves the last job's LoRAs merged in the layers and patches every layer's
forward): a plain build exactly the checkpoint's weights, a bake exactly the checkpoint plus its LoRAs
(merged by hand from the LoRA files), read back from the ONNX initializers through the weight map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from tests import lora_files
from trt_lib.export.onnx_export import load_weight_map
from trt_lib.model.profiles import Profile
from trt_lib.model.tiny_unets import make_unet

pytest.importorskip("tensorrt_rtx")

SMALL = {"batch": [1, 1, 1], "height": [64, 64, 64], "width": [64, 64, 64], "tokens": [75, 75, 75]}


@pytest.fixture
def builds(lora_webui, monkeypatch):
    """The stand-in with sd1 loaded on the PyTorch UNet; ``builds(loras)`` runs a build through the
    extension's queue up to its export (the engine build itself is left out) and returns the ONNX path."""
    webui = lora_webui
    webui.add_checkpoint("sd1.safetensors", "sd1")
    webui.load("sd1.safetensors")
    webui.shared.opts.set("sd_unet", "None")
    webui.shared.opts.set("trt_backend", "tensorrt_rtx")
    webui.shared.opts.set("trt_compute_capability", "8.9")  # a target, so the build is not refused up front
    extension = webui.module("trt_webui.extension")
    exported: list[Path] = []
    monkeypatch.setattr(extension, "build_stage", lambda onnx_path, *args, **kwargs: exported.append(onnx_path))

    def build(loras: list[dict] | None = None) -> Path:
        job = webui.EXT.submit_build([Profile.from_dict(SMALL)], loras)
        job = webui.EXT.jobs.wait(job.id, timeout=300)
        assert job.state == "done", job.message
        return exported[-1]

    webui.build = build
    return webui


def job(webui, prompt: str) -> torch.Tensor:
    return webui.txt2img(prompt=prompt, negative_prompt="blurry", steps=2, seed=7).images[0]


def initializers(onnx_path: Path) -> dict[str, np.ndarray]:
    """state_dict key -> the ONNX initializer that holds it, through the export's weight map."""
    proto = onnx.load(str(onnx_path))
    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return {ref.key: values[name] for name, ref in load_weight_map(onnx_path).items()}


def expected(loras: list[tuple[str, float]], webui) -> dict[str, torch.Tensor]:
    """The checkpoint's own tensors (the stand-in's checkpoint is ``make_unet`` with seed 0) plus each LoRA's
    delta computed from its file by hand."""
    unet = lora_files.merged_by_hand(make_unet("sd1"), [(webui.lora_tensors[n], w) for n, w in loras])
    return unet.state_dict()


def assert_holds(onnx_path: Path, want: dict[str, torch.Tensor], changed: set[str]) -> None:
    got = initializers(onnx_path)
    params = {k for k, _ in make_unet("sd1").named_parameters()}
    assert params <= got.keys(), f"parameters without an initializer: {sorted(params - got.keys())[:3]}"
    for key in params:
        if key in changed:  # the WebUI's merge in fp32 vs the hand merge in fp64
            np.testing.assert_allclose(got[key], want[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            assert np.array_equal(got[key], want[key].numpy()), f"{key} is not the checkpoint's own tensor"


def lora_layer_keys(*names: str) -> set[str]:
    layers = lora_files.layer_names(make_unet("sd1"))
    return {f"{layers[i]}.weight" for name in names for i in ({"sd1_a": (0, 1), "sd1_b": (1, 2)}[name])}


BEFORE = {
    "nothing": [],
    "a prompt LoRA": ["a cat <lora:sd1_a:1>"],
    "a prompt LoRA, then none": ["a cat <lora:sd1_a:1>", "a cat"],
    "two prompt LoRAs": ["a cat <lora:sd1_b:0.5> <lora:sd1_a:0.7>"],
    "LoRA B, then the baked LoRA at another weight": ["a cat <lora:sd1_b:1>", "a cat <lora:sd1_a:0.3>"],
}
BUILDS = {"plain": [], "baked A": [("sd1_a", 0.8)], "baked A and B": [("sd1_a", 0.8), ("sd1_b", -0.5)]}


@pytest.mark.parametrize("before", BEFORE)
@pytest.mark.parametrize("build", BUILDS)
def test_an_export_holds_the_checkpoint_and_its_baked_loras_only(builds, before, build):
    webui = builds
    for prompt in BEFORE[before]:
        job(webui, prompt)
    loras = BUILDS[build]
    onnx_path = webui.build([{"name": n, "weight": w} for n, w in loras])
    assert_holds(onnx_path, expected(loras, webui), lora_layer_keys(*(n for n, _ in loras)))


def test_a_sequence_of_jobs_and_builds_keeps_every_export_exact_and_the_users_state(builds):
    """Builds in between PyTorch jobs: each export exact, a later plain build (same weights) reuses the first
    plain export, and the user's next job gives the same image as before the builds."""
    webui = builds
    networks = webui.networks
    with_a = job(webui, "a cat <lora:sd1_a:1>")
    plain = webui.build()
    assert_holds(plain, expected([], webui), set())
    job(webui, "a cat <lora:sd1_b:0.6>")
    baked = webui.build([{"name": "sd1_a", "weight": 0.8}])
    assert_holds(baked, expected([("sd1_a", 0.8)], webui), lora_layer_keys("sd1_a"))
    loaded = [(n.name, n.unet_multiplier) for n in networks.loaded_networks]
    forwards = {cls: cls.forward for cls in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm)}
    assert webui.build() == plain
    assert_holds(plain, expected([], webui), set())
    assert [(n.name, n.unet_multiplier) for n in networks.loaded_networks] == loaded == [("sd1_b", 0.6)]
    assert all(cls.forward is f and f.__name__.startswith("network_") for cls, f in forwards.items())
    assert torch.equal(job(webui, "a cat <lora:sd1_a:1>"), with_a)


def test_the_functional_lora_mode_is_not_traced_either(builds):
    """With the WebUI's "old method" (``lora_functional``) the patched forwards add each LoRA's output in the
    layer instead of merging: no trace of that may reach a plain export."""
    webui = builds
    webui.shared.opts.set("lora_functional", True)
    job(webui, "a cat <lora:sd1_a:1>")
    assert_holds(webui.build(), expected([], webui), set())
    assert_holds(webui.build([{"name": "sd1_b", "weight": 1.0}]), expected([("sd1_b", 1.0)], webui),
                 lora_layer_keys("sd1_b"))
