"""LoRAs end to end in the WebUI stand-in with its Lora extension (tests/webui_stub/lora): baked into an
export through the WebUI's merge and restored bit for bit, and prompt LoRAs refitted into engines."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from trt_lib.export import export_onnx
from trt_lib.families import get_family
from trt_lib.onnx_runtime import OnnxRuntimeRunner
from trt_lib.profiles import Profile
from trt_lib.tiny_unets import make_unet

LORA_STUB = Path(__file__).resolve().parent.parent / "webui_stub" / "lora"
_spec = importlib.util.spec_from_file_location("lora_files", Path(__file__).resolve().parent.parent / "lora_files.py")
lora_files = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lora_files)
_LORA_MODULES = ("networks", "network", "network_lora", "network_hada", "lyco_helpers", "extra_networks_lora",
                 "lora_script")
SMALL = {"batch": [1, 1, 4], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 150]}


@pytest.fixture
def lora_webui(webui):
    """The stand-in with the built-in Lora extension loaded and LoRA files (made for the seed-0 UNets) on disk."""
    folder = Path(webui.paths.models_path) / "Lora"
    for family in ("sd1", "sdxl"):
        unet = make_unet(family)
        names = lora_files.layer_names(unet)
        webui.lora_tensors = getattr(webui, "lora_tensors", {})
        for name, tensors in {f"{family}_a": lora_files.make_lora(unet, names[:2], seed=1),
                              f"{family}_b": lora_files.make_lora(unet, names[1:], seed=2),
                              f"{family}_loha": lora_files.make_lora(unet, names, seed=3, loha=True)}.items():
            lora_files.write(folder, name, tensors)
            webui.lora_tensors[name] = tensors
    sys.path.insert(0, str(LORA_STUB))
    try:
        undo = importlib.import_module("lora_script").install()
        webui.networks = sys.modules["networks"]
        yield webui
        undo()
    finally:
        sys.path.remove(str(LORA_STUB))
        for name in _LORA_MODULES:
            sys.modules.pop(name, None)


def parity(unet_onnx: Path, family: str, reference: torch.nn.Module) -> float:
    fam = get_family(family)
    profile = Profile.from_dict({"batch": [1, 1, 1], "height": [64] * 3, "width": [64] * 3, "tokens": [75] * 3})
    run = OnnxRuntimeRunner(unet_onnx, fam.input_names, fam.output_name, [fam.engine_shapes(profile)])
    feeds = fam.example_inputs(1, 64, 64, 77, seed=5)
    with torch.no_grad():
        want = reference(*feeds.values())
    return float((run(feeds) - want).norm() / want.norm())


@pytest.mark.parametrize("family,lora", [("sd1", "sd1_a"), ("sdxl", "sdxl_loha")])
def test_bake_matches_the_hand_merge_and_restores_bit_for_bit(lora_webui, tmp_path, family, lora):
    webui = lora_webui
    webui.add_checkpoint(f"{family}.safetensors", family)
    webui.load(f"{family}.safetensors")
    bake = webui.module("trt_webui.lora_bake")
    unet = webui.unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with bake.baked(unet, [{"name": lora, "weight": 0.8}]) as info:
        assert len(info.layers) == (2 if lora.endswith("_a") else 3)
        export_onnx(unet, get_family(family), tmp_path / "unet.onnx", dtype=torch.float32)
    after = unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "restored bit for bit"
    reference = lora_files.merged_by_hand(make_unet(family), [(webui.lora_tensors[lora], 0.8)])
    error = parity(tmp_path / "unet.onnx", family, reference)
    base_error = parity(tmp_path / "unet.onnx", family, make_unet(family))
    print(f"{family} {lora}: baked export vs PyTorch merged by hand: relative error {error:.2e} "
          f"(vs the base model: {base_error:.2e})")
    assert error <= 1e-4 < base_error


@pytest.mark.catalogue("files")
def test_a_failed_restore_refuses_the_engine(lora_webui, monkeypatch):
    webui = lora_webui
    webui.add_checkpoint("sd1.safetensors", "sd1")
    webui.load("sd1.safetensors")
    bake = webui.module("trt_webui.lora_bake")
    unet = webui.unet()
    with pytest.raises(bake.LoraRestoreError, match="1 tensors differ.*not recorded"):
        with bake.baked(unet, [{"name": "sd1_a", "weight": 1.0}]):
            unet.conv_in.network_layer_name = "not merged"  # a layer changed behind the backups' back
            with torch.no_grad():
                unet.conv_in.bias.add_(1.0)


@pytest.mark.catalogue("api")
@pytest.mark.parametrize("name", ["nope", "../../etc/passwd", "/abs/lora", "a\x00b", "x" * 300])
def test_unknown_lora_is_refused_before_queueing_with_the_available_ones(lora_webui, name):
    webui = lora_webui
    webui.add_checkpoint("sd1.safetensors", "sd1")
    webui.load("sd1.safetensors")
    bake = webui.module("trt_webui.lora_bake")
    available = "available: sd1_a, sd1_b, sd1_loha, sdxl_a, sdxl_b, sdxl_loha"
    with pytest.raises(bake.LoraNotFoundError, match=re.escape(f"unknown LoRA {name!r}; {available}")) as e:
        webui.EXT.submit_build([Profile.from_dict(SMALL)], [{"name": name, "weight": 1}])
    assert e.value.status_code == 404 and not webui.EXT.jobs.jobs()


def engine(webui, *, refittable: bool):
    webui.add_checkpoint("sd1.safetensors", "sd1")
    webui.load("sd1.safetensors")
    webui.use_stand_in()
    entry = webui.add_engine("sd1.safetensors", "sd1", SMALL)
    manifest = webui.EXT.store.manifest_path
    data = json.loads(manifest.read_text())
    data["engines"][0]["refittable"] = refittable
    manifest.write_text(json.dumps(data))
    webui.sd_unet.list_unets()
    webui.shared.opts.set("sd_unet", "[TRT] sd1")
    return entry


def job(webui, prompt: str):
    return webui.txt2img(prompt=prompt, negative_prompt="blurry", steps=2, seed=7)


def test_prompt_loras_switch_by_refit_and_return_to_base(lora_webui):
    webui = lora_webui
    engine(webui, refittable=True)
    base = job(webui, "a cat")
    with_a = job(webui, "a cat <lora:sd1_a:0.8>")
    assert with_a.extra_generation_params["TensorRT LoRA"] == "sd1_a:0.8 (refit)"
    with_b = job(webui, "a cat <lora:sd1_b:1:0.5>")  # te 1, unet 0.5
    back = job(webui, "a cat")
    assert "TensorRT LoRA" not in back.extra_generation_params
    webui.shared.opts.set("sd_unet", "None")
    torch_a = job(webui, "a cat <lora:sd1_a:0.8>")
    torch_b = job(webui, "a cat <lora:sd1_b:1:0.5>")
    for got, want in ((with_a, torch_a), (with_b, torch_b)):
        error = float((got.images[0] - want.images[0]).norm() / want.images[0].norm())
        print(f"engine with prompt LoRA vs PyTorch UNet with the WebUI's merge: relative error {error:.2e}")
        assert error <= 1e-4
    assert float((with_a.images[0] - base.images[0]).norm() / base.images[0].norm()) > 1e-3
    # none again after A and B: the exported weights again (bit for bit in test_lora_refit); here the same
    # result as before any LoRA up to ONNX Runtime's optimised vs unoptimised session, and repeatable
    assert float((back.images[0] - base.images[0]).norm() / base.images[0].norm()) < 1e-4
    webui.shared.opts.set("sd_unet", "[TRT] sd1")
    job(webui, "a cat <lora:sd1_b:0.3>")
    assert torch.equal(job(webui, "a cat").images[0], back.images[0])


@pytest.mark.catalogue("sampling")
@pytest.mark.parametrize("setting", ["raise", "fallback"])
def test_prompt_lora_on_an_engine_without_refit(lora_webui, setting):
    webui = lora_webui
    engine(webui, refittable=False)
    webui.shared.opts.set("trt_on_uncovered", setting)
    if setting == "raise":
        with pytest.raises(Exception, match="sd1_a:0.8 cannot be applied: engine .* was built without refit"):
            job(webui, "a cat <lora:sd1_a:0.8>")
        return
    out = job(webui, "a cat <lora:sd1_a:0.8>")
    assert "built without refit" in out.extra_generation_params["TensorRT"]
    webui.shared.opts.set("sd_unet", "None")
    assert torch.equal(out.images[0], job(webui, "a cat <lora:sd1_a:0.8>").images[0])


def test_the_tab_picks_loras_from_the_webuis_list(lora_webui):
    tab = lora_webui.module("trt_webui.tab")
    bake = lora_webui.module("trt_webui.lora_bake")
    assert bake.available_names() == ["sd1_a", "sd1_b", "sd1_loha", "sdxl_a", "sdxl_b", "sdxl_loha"]
    assert tab.add_lora("", "sd1_a") == ("sd1_a:1", None)
    assert tab.add_lora("sd1_a:0.5", "sd1_b") == ("sd1_a:0.5, sd1_b:1", None)
    assert tab.add_lora("sd1_a:0.5", "sd1_a") == ("sd1_a:0.5", None)  # already there: its weight is kept
    assert tab.parse_loras("sd1_a:0.5, sd1_b:1") == [{"name": "sd1_a", "weight": 0.5}, {"name": "sd1_b", "weight": 1}]
    ((blocks, title, _),) = tab.on_ui_tabs()
    assert title == "TensorRT"


@pytest.mark.catalogue("sampling")
def test_prompt_loras_of_an_inner_job_reach_the_engine(lora_webui):
    """An inner job (ADetailer's, without the always-on script) with its own prompt LoRA is refitted at
    its first UNet call, and the next job without LoRA is back at the base weights."""
    webui = lora_webui
    engine(webui, refittable=True)
    latent = torch.randn(1, 4, 8, 8)

    def inner(prompt: str):
        return webui.img2img(inner=True, prompt=prompt, steps=2, seed=7, init_latent=latent, denoising_strength=0.6)

    base = inner("a face")
    with_a = inner("a face <lora:sd1_a:0.8>")
    back = inner("a face")
    webui.shared.opts.set("sd_unet", "None")
    torch_a = inner("a face <lora:sd1_a:0.8>")
    assert float((with_a.images[0] - torch_a.images[0]).norm() / torch_a.images[0].norm()) <= 1e-4
    assert float((with_a.images[0] - base.images[0]).norm() / base.images[0].norm()) > 1e-3
    assert float((back.images[0] - base.images[0]).norm() / base.images[0].norm()) < 1e-4


def test_engine_check_merges_the_baked_loras_and_never_an_earlier_jobs(lora_webui, tmp_path):
    webui = lora_webui
    webui.add_checkpoint("sd1.safetensors", "sd1")
    webui.load("sd1.safetensors")
    webui.shared.opts.set("trt_run_with", "ONNX Runtime (reference)")
    unet, loras = webui.unet(), [{"name": "sd1_a", "weight": 0.8}]
    with webui.module("trt_webui.lora_bake").baked(unet, loras):
        export_onnx(unet, get_family("sd1"), tmp_path / "baked" / "unet.onnx", dtype=torch.float32)
    baked = webui.add_engine("sd1.safetensors", "sd1", SMALL, loras=loras, onnx=tmp_path / "baked" / "unet.onnx")
    plain = webui.add_engine("sd1.safetensors", "sd1", SMALL)
    claims = webui.add_engine("sd1.safetensors", "sd1", SMALL, loras=loras)  # says sd1_a, holds the base weights
    webui.shared.opts.set("sd_unet", "None")
    first = job(webui, "a cat <lora:sd1_b:1>")  # the WebUI merges sd1_b into its layers and leaves it there
    check = webui.module("trt_webui.engine_check").check
    assert check(baked.id)[1].passed
    assert check(plain.id)[1].passed, "sd1_b of the last job must not reach the reference"
    assert not check(claims.id)[1].passed
    base = make_unet("sd1").state_dict()
    assert all(torch.equal(v, base[k]) for k, v in unet.state_dict().items()), "the UNet is back at its weights"
    assert torch.equal(job(webui, "a cat <lora:sd1_b:1>").images[0], first.images[0])
