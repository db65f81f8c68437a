"""The reference runtime ("Run engines with: ONNX Runtime (reference)") as a user meets it: only when chosen,
named ONNX Runtime in the dropdown, tab, console and infotext, and a whole job through the provider that gives
the PyTorch UNet's result."""

from __future__ import annotations

import sys

import pytest
import torch

SMALL = {"batch": [1, 1, 2], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 150]}
REFERENCE = "ONNX Runtime (reference)"
LONG_PROMPT = " ".join(["word"] * 100)


@pytest.fixture
def sd1(webui):
    """An engine recorded for TensorRT (which cannot run here); the runtime check is not patched."""
    webui.add_checkpoint("sd15.safetensors", "sd1")
    webui.load("sd15.safetensors")
    webui.engine = webui.add_engine("sd15.safetensors", "sd1", SMALL)
    webui.sd_unet.list_unets()
    return webui


def items(webui) -> list[str]:
    return webui.shared_items.sd_unet_items()


def test_it_is_never_chosen_by_itself(sd1):
    assert items(sd1) == ["Automatic", "None"]  # TensorRT cannot load here, and nothing else is tried
    assert "ONNX Runtime" not in sd1.module("trt_webui.tab").status_markdown()
    job = sd1.txt2img(prompt="a cat", steps=1)
    assert sd1.sd_unet.current_unet is None and "UNet runtime" not in job.extra_generation_params


@pytest.mark.catalogue("sampling")
def test_a_whole_job_runs_on_onnx_runtime_named_as_such_and_matches_pytorch(sd1, capsys):
    sd1.shared.opts.set("trt_run_with", REFERENCE)  # the dropdown is listed again by the setting's onchange
    assert items(sd1) == ["Automatic", "[ORT] sd15", "None"]
    assert "**Engines run with:** ONNX Runtime" in sd1.module("trt_webui.tab").status_markdown()
    job = {"prompt": LONG_PROMPT, "negative_prompt": "blurry", "steps": 3, "seed": 11,
           "enable_hr": True, "hr_scale": 2.0, "hr_second_pass_steps": 2, "denoising_strength": 0.6}
    engine = sd1.txt2img(**job)
    assert sd1.sd_unet.current_unet.option.label == "[ORT] sd15"
    assert engine.extra_generation_params["UNet runtime"] == "ONNX Runtime (reference, CPU)"
    assert "engines run on ONNX Runtime (reference), to check them, not for speed" in capsys.readouterr().out
    sd1.shared.opts.set("sd_unet", "None")
    pytorch = sd1.txt2img(**job)
    assert sd1.sd_unet.current_unet is None and "UNet runtime" not in pytorch.extra_generation_params
    error = float((engine.images[0] - pytorch.images[0]).norm() / pytorch.images[0].norm())
    print(f"hires job, 100-token prompt, on ONNX Runtime vs the PyTorch UNet: relative error {error:.1e}")
    # each call agrees to ~1e-6 (fp32); 5 steps and an upscale amplify that to ~1e-4, far under fp16 (2e-2)
    assert engine.images[0].shape[-2:] == (16, 16) and error < 1e-3  # the hires pass ran


def test_the_infotext_names_the_runtime_that_ran(sd1, monkeypatch):
    """With TensorRT the runner's name is the backend's (``TensorRTRunner.runtime_name = backend.label``)."""
    reference_runner = sd1.module("trt_lib.engines.onnx_runtime").reference_runner

    def as_tensorrt(store, entry):
        runner = reference_runner(store, entry)
        runner.runtime_name = "TensorRT"
        return runner

    store_module = sd1.module("trt_lib.store.engine_store")
    monkeypatch.setattr(sd1.EXT, "runtime", lambda: store_module.Runtime("tensorrt", "stand-in", None))
    monkeypatch.setattr(sd1.EXT, "runner_factory", as_tensorrt)
    sd1.sd_unet.list_unets()
    assert items(sd1) == ["Automatic", "[TRT] sd15", "None"]
    assert sd1.txt2img(prompt="a cat", steps=1).extra_generation_params["UNet runtime"] == "TensorRT"


def test_without_onnx_runtime_the_tab_says_how_to_install_it(sd1, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: its import fails
    sd1.shared.opts.set("trt_run_with", REFERENCE)
    assert items(sd1) == ["Automatic", "None"]
    status = sd1.module("trt_webui.tab").status_markdown()
    assert "Engines run with ONNX Runtime (reference), which is not available" in status
    assert "python -m pip install onnxruntime" in status


def test_an_engine_without_its_onnx_is_listed_with_the_reason(sd1):
    sd1.shared.opts.set("trt_run_with", REFERENCE)
    (sd1.EXT.store.folder / "onnx").rename(sd1.EXT.store.folder / "moved")
    listing = sd1.EXT.listing()
    assert "no ONNX export of it (onnx/sd1/unet.onnx) for the reference runtime" in listing.status[sd1.engine.id]
    sd1.EXT.refresh_unets()  # the dropdown's refresh
    assert items(sd1) == ["Automatic", "None"]
    assert torch.is_tensor(sd1.txt2img(prompt="a cat", steps=1).images[0])  # the PyTorch UNet, as the WebUI does
