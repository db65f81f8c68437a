"""LoRAs end to end in the WebUI stand-in with its Lora extension (tests/webui_stub/lora): baked into an
export through the WebUI's merge and restored bit for bit, and prompt LoRAs refitted into engines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests import lora_files
from trt_lib.engines.onnx_runtime import OnnxRuntimeRunner
from trt_lib.export.onnx_export import export_onnx
from trt_lib.model.families import get_family
from trt_lib.model.profiles import Profile
from trt_lib.model.tiny_unets import make_unet

SMALL = {"batch": [1, 1, 4], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 150]}


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
    with bake.exported(unet, [{"name": lora, "weight": 0.8}]) as info:
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
        with bake.exported(unet, [{"name": "sd1_a", "weight": 1.0}]):
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
    assert e.value.status_code == 422 and not webui.EXT.jobs.jobs()


BAD_LORAS = {  # input -> what the refusal says
    "weight far beyond fp16 and fp32": ([{"name": "sd1_a", "weight": 1e39}],
                                        "'sd1_a': weight 1e+39 is not in -10..10, not 0"),
    "infinite weight": ([{"name": "sd1_a", "weight": float("inf")}], "'sd1_a': weight inf is not in"),
    "NaN weight": ([{"name": "sd1_a", "weight": float("nan")}], "'sd1_a': weight nan is not in"),
    "weight 0": ([{"name": "sd1_a", "weight": 0}], "weight 0 is not in -10..10, not 0 (0 leaves the UNet as it is"),
    "just over the limit": ([{"name": "sd1_a", "weight": -10.01}], "weight -10.01 is not in"),
    "a weight that is no number": ([{"name": "sd1_a", "weight": "strong"}], "'sd1_a': weight 'strong' is not a number"),
    "the same LoRA twice": ([{"name": "sd1_a", "weight": 0.5}, {"name": "sd1_a", "weight": 0.3}],
                            "LoRA 'sd1_a' is listed twice: list it once, with the sum of its weights"),
    "no name": ([{"name": " ", "weight": 1}], "a LoRA without a name"),
    "every problem at once": ([{"name": "sd1_a", "weight": 0}, {"name": "sd1_b", "weight": 20}],
                              "'sd1_a': weight 0 is not in -10..10, not 0 (0 leaves the UNet as it is: remove the "
                              "LoRA instead); LoRA 'sd1_b': weight 20 is not in"),
    "unknown and bad weight": ([{"name": "nope", "weight": 1e39}], "'nope': weight 1e+39 is not in"),
}


@pytest.mark.catalogue("api")
@pytest.mark.parametrize("case", BAD_LORAS)
def test_bad_lora_input_is_refused_before_queueing_with_422(lora_webui, case):
    webui = lora_webui
    webui.add_checkpoint("sd1.safetensors", "sd1")
    webui.load("sd1.safetensors")
    loras, says = BAD_LORAS[case]
    bake = webui.module("trt_webui.lora_bake")
    with pytest.raises(bake.LoraError, match=re.escape(says)) as e:
        webui.EXT.submit_build([Profile.from_dict(SMALL)], loras)
    assert e.value.status_code == 422 and not webui.EXT.jobs.jobs()


@pytest.mark.parametrize("weight", [-10, -0.01, 0.01, 10, "0.5"])
def test_weights_in_the_stated_range_are_taken(lora_webui, weight):
    bake = lora_webui.module("trt_webui.lora_bake")
    assert bake.check_loras([{"name": " sd1_a ", "weight": weight}]) == [{"name": "sd1_a", "weight": float(weight)}]


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
    # a LoRA added after the UI was made is offered when the tab is opened: trt.js clicks the hidden button
    lora_files.write(Path(lora_webui.paths.models_path) / "Lora", "added_later", lora_webui.lora_tensors["sd1_a"])
    refresh = next(i for i, block in blocks.blocks.items() if block.elem_id == "trt_lora_refresh")
    on_open = next(blocks.fns[i].fn for i, d in enumerate(blocks.dependencies)
                   if d["targets"] == [refresh] and d["trigger"] == "click")
    assert "added_later" in on_open()["choices"]
    js = (Path(__file__).resolve().parents[2] / "javascript" / "trt.js").read_text()
    assert "#trt_lora_refresh" in js and "onUiTabChange" in js


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


def baked_engine(webui, setting: str) -> None:
    webui.add_checkpoint("sd1.safetensors", "sd1")
    webui.load("sd1.safetensors")
    webui.use_stand_in()
    webui.add_engine("sd1.safetensors", "sd1", SMALL, loras=[{"name": "sd1_a", "weight": 0.8}])
    webui.sd_unet.list_unets()
    webui.shared.opts.set("sd_unet", "[TRT] sd1 [LoRA sd1_a:0.8]")
    webui.shared.opts.set("trt_on_uncovered", setting)


def wide(webui, prompt: str):
    """A job over the engine's 128 px width."""
    return webui.txt2img(prompt=prompt, negative_prompt="blurry", steps=2, seed=7, width=192)


@pytest.mark.catalogue("sampling")
def test_a_baked_entry_that_falls_back_runs_the_pytorch_unet_with_its_loras(lora_webui):
    webui = lora_webui
    baked_engine(webui, "fallback")
    out = wide(webui, "a cat")
    assert out.extra_generation_params["TensorRT"].endswith("with the engine's baked LoRA sd1_a:0.8 applied to it")
    webui.shared.opts.set("sd_unet", "None")
    with_lora = wide(webui, "a cat <lora:sd1_a:0:0.8>")  # text-encoder weight 0, UNet 0.8: the engine's UNet
    assert torch.equal(out.images[0], with_lora.images[0])
    assert not torch.equal(wide(webui, "a cat").images[0], with_lora.images[0])


@pytest.mark.catalogue("sampling")
def test_no_engine_covers_a_baked_entry_names_a_bake_of_the_same_loras(lora_webui):
    webui = lora_webui
    baked_engine(webui, "raise")
    with pytest.raises(Exception, match=r"No TensorRT engine for sd1.* with LoRA sd1_a:0.8 covers") as e:
        wide(webui, "a cat")
    assert 'in the TensorRT tab with "sd1_a:0.8" in its LoRA box' in str(e.value)


def test_engine_check_merges_the_baked_loras_and_never_an_earlier_jobs(lora_webui, tmp_path):
    webui = lora_webui
    webui.add_checkpoint("sd1.safetensors", "sd1")
    webui.load("sd1.safetensors")
    webui.shared.opts.set("trt_run_with", "ONNX Runtime (reference)")
    unet, loras = webui.unet(), [{"name": "sd1_a", "weight": 0.8}]
    with webui.module("trt_webui.lora_bake").exported(unet, loras):
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
