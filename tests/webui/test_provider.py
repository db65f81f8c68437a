"""The sd_unet provider end to end: WebUI jobs whose UNet calls run on engine entries (their real ONNX
exports on the ONNX Runtime stand-in), compared call by call with the PyTorch UNet."""

from __future__ import annotations

import types

import pytest
import torch

SMALL = {"batch": [1, 1, 4], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 150]}
LONG_PROMPT = " ".join(["word"] * 100)  # 100 tokens: two chunks, 154 context rows


def record_calls(webui, monkeypatch) -> list[dict]:
    """Every call the active engine receives, with its inputs and output."""
    provider = webui.module("trt_webui.provider")
    calls: list[dict] = []
    forward = provider.TrtUnet.forward

    def spy(self, x, timesteps, context, *args, **kwargs):
        out = forward(self, x, timesteps, context, *args, **kwargs)
        calls.append({"x": x.clone(), "t": timesteps.clone(), "context": context.clone(),
                      "y": kwargs.get("y"), "args": args, "out": out.clone()})
        return out

    monkeypatch.setattr(provider.TrtUnet, "forward", spy)
    return calls


def assert_matches_pytorch(webui, calls: list[dict]) -> None:
    unet = webui.unet()
    for call in calls:
        with torch.no_grad():
            ref = type(unet).original_forward(unet, call["x"], call["t"], call["context"], y=call["y"])
        assert call["out"].shape == ref.shape
        assert torch.allclose(call["out"], ref, atol=1e-4, rtol=0), (call["out"] - ref).abs().max()


def shapes(calls: list[dict]) -> list[tuple]:
    return [(c["x"].shape[0], c["x"].shape[1], c["x"].shape[2], c["context"].shape[1]) for c in calls]


@pytest.fixture
def sd1(webui):
    return webui.with_engine("sub/sd15 v1.safetensors", "sd1", SMALL)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_automatic_runs_the_engine_and_matches_pytorch(sd1, monkeypatch, batch_size):
    calls = record_calls(sd1, monkeypatch)
    sd1.txt2img(prompt="a cat", negative_prompt="blurry", batch_size=batch_size, steps=2)
    assert sd1.sd_unet.current_unet_option.label == "[TRT] sub_sd15 v1"
    assert shapes(calls) == [(2 * batch_size, 4, 8, 77)] * 2  # cond and uncond in one call
    assert not calls[0]["t"].eq(calls[0]["t"].round()).all(), "timesteps are fractional, as the WebUI sends"
    assert_matches_pytorch(sd1, calls)


def test_prompt_and_negative_of_different_lengths_are_separate_calls(sd1, monkeypatch):
    calls = record_calls(sd1, monkeypatch)
    sd1.txt2img(prompt=LONG_PROMPT, negative_prompt="blurry", steps=2)
    assert shapes(calls) == [(1, 4, 8, 154), (1, 4, 8, 77)] * 2
    assert_matches_pytorch(sd1, calls)


@pytest.mark.parametrize(("options", "job", "expected"), [
    ({"pad_cond_uncond": True}, {"prompt": LONG_PROMPT}, [(2, 4, 8, 154)] * 2),
    ({"pad_cond_uncond_v0": True}, {"prompt": LONG_PROMPT}, [(2, 4, 8, 154)] * 2),
    ({"batch_cond_uncond": False}, {"batch_size": 2}, [(2, 4, 8, 77)] * 4),
    ({}, {"batch_size": 2, "prompt": LONG_PROMPT}, [(2, 4, 8, 154), (2, 4, 8, 77)] * 2),
    ({}, {"prompt": "a cat AND a dog"}, [(3, 4, 8, 77)] * 2),
    ({"skip_early_cond": 0.5}, {}, [(1, 4, 8, 77)] * 2),
], ids=["pad", "pad-v0", "no-batch-cond-uncond", "batch-2-long-prompt", "AND", "skip-early-cfg"])
def test_webui_batching_settings(sd1, monkeypatch, options, job, expected):
    for key, value in options.items():
        sd1.shared.opts.set(key, value)
    calls = record_calls(sd1, monkeypatch)
    sd1.txt2img(**{"prompt": "a cat", "negative_prompt": "blurry", "steps": 2, **job})
    assert shapes(calls) == expected
    assert_matches_pytorch(sd1, calls)


@pytest.mark.catalogue("sampling")
def test_an_engine_that_cannot_load_fails_the_job_clearly(sd1):
    (sd1.EXT.store.folder / "onnx").rename(sd1.EXT.store.folder / "moved")
    with pytest.raises(Exception, match="has no ONNX export|cannot load") as caught:
        sd1.txt2img(prompt="a cat", steps=2)
    assert caught.value.status_code == 500 and sd1.errors.reported == []


def test_hires_pass_and_negative_guidance_minimum_sigma(sd1, monkeypatch):
    calls = record_calls(sd1, monkeypatch)
    sd1.txt2img(prompt="a cat", steps=4, enable_hr=True, hr_scale=2.0, hr_second_pass_steps=2,
                denoising_strength=0.6, s_min_uncond=100.0)
    batches = [c["x"].shape[0] for c in calls]
    sizes = [c["x"].shape[2] for c in calls]
    assert batches[:4] == [2, 1, 2, 1]  # NGMS drops the uncond rows on odd steps
    assert sizes[:4] == [8] * 4 and set(sizes[4:]) == {16} and len(calls) > 4
    assert_matches_pytorch(sd1, calls)


def test_sdxl_receives_y(webui, monkeypatch):
    webui.with_engine("xl/base.safetensors", "sdxl", SMALL)
    calls = record_calls(webui, monkeypatch)
    webui.txt2img(prompt="a cat", steps=2, batch_size=2)
    assert calls and all(c["y"] is not None and c["y"].shape == (4, 2816) for c in calls)
    assert_matches_pytorch(webui, calls)


def test_inpainting_unet_gets_nine_channels(webui, monkeypatch):
    webui.with_engine("inpaint.safetensors", "sd1-inpaint", SMALL)
    calls = record_calls(webui, monkeypatch)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    out = webui.img2img(prompt="a cat", steps=3, init_latent=torch.randn(1, 4, 8, 8), mask=mask)
    assert calls and {c["x"].shape[1] for c in calls} == {9} and out.images[0].shape[1] == 4
    assert_matches_pytorch(webui, calls)


@pytest.mark.catalogue("sampling")
def test_uncovered_job_stops_before_the_first_step_naming_what_is_missing(webui, monkeypatch):
    webui.with_engine("sd15.safetensors", "sd1", {"batch": 1, "height": 512, "width": 512, "tokens": 75})
    runs = []
    monkeypatch.setattr(webui.EXT, "runner_factory", lambda *a: runs.append(a))
    with pytest.raises(Exception) as caught:
        webui.txt2img(prompt="a cat", steps=2, width=512, height=512, batch_size=2)
    message = str(caught.value)
    assert "batch size 2 is 1 over the engine's maximum of 1" in message and "rows" not in message
    assert "(dynamic-512-768)" in message  # the preset that covers the job
    assert runs == []  # no engine was even loaded: nothing ran


@pytest.mark.catalogue("sampling")
def test_a_refused_ui_job_shows_one_readable_paragraph(webui, capsys):
    """The UI shows ``type: message`` escaped in a div whose line breaks collapse: the message is one
    paragraph of sentences. The WebUI reports every failed UI job with its traceback (call_queue's
    ``errors.report``); the extension's own line comes first and says it all."""
    webui.with_engine("sd15.safetensors", "sd1", {"batch": 1, "height": 512, "width": 512, "tokens": 75})
    ui_txt2img = webui.call_queue.wrap_gradio_call_no_job(lambda **job: [webui.txt2img(**job)])
    *_, html_box = ui_txt2img(prompt="a cat", negative_prompt=LONG_PROMPT, steps=2, width=512, height=512)
    assert html_box.startswith("<div class='error'>NoProfileError: No TensorRT engine for sd15")
    assert "\n" not in html_box
    assert "the negative prompt needs 150 tokens, 75 over the engine&#x27;s maximum of 75." in html_box
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("[TensorRT] generation stopped (HTTP 422): No TensorRT engine for sd15")


@pytest.mark.catalogue("sampling")
def test_hires_size_off_the_grid_is_refused_before_the_first_pass(sd1, monkeypatch):
    calls = record_calls(sd1, monkeypatch)
    with pytest.raises(Exception, match="96x96 px is not on the 64 px grid"):
        sd1.txt2img(prompt="a cat", steps=2, enable_hr=True, hr_scale=1.5)
    assert calls == []  # the first pass did not run either


@pytest.mark.catalogue("sampling")
def test_fallback_runs_on_pytorch_says_so_once_and_restores_the_engine(sd1, monkeypatch, capsys):
    sd1.shared.opts.set("trt_on_uncovered", "fallback")
    calls = record_calls(sd1, monkeypatch)
    pytorch_calls = []
    handle = sd1.unet().register_forward_hook(lambda m, a, out: pytorch_calls.append(a[0].shape))
    result = sd1.txt2img(prompt="a cat", steps=2, width=192)
    handle.remove()
    assert calls == [] and len(pytorch_calls) == 2 and pytorch_calls[0][3] == 24
    assert "PyTorch UNet used" in result.info and "width 192 px" in result.info
    assert capsys.readouterr().out.count("using the PyTorch UNet for this job") == 1
    assert sd1.sd_unet.current_unet_option.label == "[TRT] sub_sd15 v1"  # active again after the job
    sd1.txt2img(prompt="a cat", steps=2)
    assert len(calls) == 2


@pytest.mark.catalogue("sampling")
def test_an_engine_of_another_checkpoint_is_never_run(sd1, monkeypatch):
    sd1.add_checkpoint("other.safetensors", "sd1", seed=1)
    sd1.shared.opts.set("sd_unet", "[TRT] sub_sd15 v1")
    calls = record_calls(sd1, monkeypatch)
    sd1.txt2img(prompt="a cat", steps=2)
    assert len(calls) == 2
    sd1.load("other.safetensors")  # the explicit label stays selected
    with pytest.raises(Exception, match="holds engines for sub_sd15 v1, but other is loaded") as caught:
        sd1.txt2img(prompt="a cat", steps=2)
    assert caught.value.status_code == 409 and len(calls) == 2

    sd1.shared.opts.set("trt_on_uncovered", "fallback")
    with_label = sd1.txt2img(prompt="a cat", steps=2)
    assert "PyTorch UNet used" in with_label.info and len(calls) == 2
    sd1.shared.opts.set("sd_unet", "None")
    pytorch = sd1.txt2img(prompt="a cat", steps=2)
    assert torch.equal(with_label.images[0], pytorch.images[0])  # other's own UNet ran, not sd15's engine


@pytest.mark.catalogue("sampling")
def test_an_engine_that_cannot_load_falls_back_when_asked(sd1, monkeypatch):
    sd1.shared.opts.set("trt_on_uncovered", "fallback")
    (sd1.EXT.store.folder / "onnx").rename(sd1.EXT.store.folder / "moved")
    result = sd1.txt2img(prompt="a cat", steps=2)
    assert "PyTorch UNet used" in result.info and "cannot load" in result.info


@pytest.mark.catalogue("sampling")
def test_a_unet_forward_hooked_by_another_extension_is_never_silently_bypassed(sd1, monkeypatch):
    unet = sd1.unet()
    seen = []

    def controlnet_like_forward(self, x, timesteps=None, context=None, **kwargs):
        seen.append(x.shape)  # an extension adding its residuals around the UNet's own forward
        return type(self).forward(self, x, timesteps, context, **kwargs)

    unet.forward = types.MethodType(controlnet_like_forward, unet)
    calls = record_calls(sd1, monkeypatch)
    with pytest.raises(Exception, match="another extension replaced the UNet's forward.*controlnet_like_forward"):
        sd1.txt2img(prompt="a cat", steps=2)
    assert calls == []  # stopped at the first UNet call, before any engine work
    seen.clear()

    sd1.shared.opts.set("trt_on_uncovered", "fallback")
    result = sd1.txt2img(prompt="a cat", steps=2)
    assert "PyTorch UNet used" in result.info and len(seen) == 2 and calls == []

    unet.forward = types.MethodType(type(unet).forward, unet)  # the extension put the forward back
    sd1.txt2img(prompt="a cat", steps=2)
    assert len(calls) == 2


def test_a_hooked_forward_that_never_calls_the_engine_is_stopped_and_nothing_leaks(sd1, monkeypatch):
    """Like ControlNet's forward (hook.py:796-835): it runs the UNet's blocks itself, never the class forward, so
    a rejection waiting on the engine would never be raised and would stop a later job instead."""
    unet = sd1.unet()
    seen = []

    def own_loop_forward(self, x, timesteps=None, context=None, **kwargs):
        seen.append(x.shape)
        return torch.zeros_like(x)

    unet.forward = types.MethodType(own_loop_forward, unet)
    calls = record_calls(sd1, monkeypatch)
    with pytest.raises(Exception, match="another extension replaced the UNet's forward.*own_loop_forward"):
        sd1.txt2img(prompt="a cat", steps=2)
    assert seen == [] and calls == []  # raised by the forward the job called, before its first step
    assert sd1.sd_unet.current_unet.pending is None
    unet.forward = types.MethodType(type(unet).forward, unet)  # the extension put the forward back
    sd1.txt2img(prompt="a cat", steps=2)  # the next job is not stopped by the earlier job's error
    assert len(calls) == 2


@pytest.mark.catalogue("sampling")
@pytest.mark.parametrize("setting", ["raise", "fallback"])
def test_an_inner_job_of_another_extension_is_checked_at_its_first_call(sd1, monkeypatch, capsys, setting):
    """ADetailer-style inpainting inside a job runs without the always-on script, at its own size."""
    sd1.shared.opts.set("trt_on_uncovered", setting)
    calls = record_calls(sd1, monkeypatch)
    crop = torch.randn(1, 4, 24, 24)  # 192x192 px: over the engine's 128 px
    if setting == "raise":
        with pytest.raises(Exception, match="width 192 px is 64 px over the engine's maximum of 128 px") as caught:
            sd1.img2img(inner=True, prompt="a face", steps=2, init_latent=crop, denoising_strength=0.5)
        assert caught.value.status_code == 422 and calls == []
        return
    pytorch_calls = []  # the PyTorch UNet's first conv sees only calls the PyTorch UNet computes
    first_conv = next(m for m in sd1.unet().modules() if isinstance(m, torch.nn.Conv2d))
    handle = first_conv.register_forward_hook(lambda m, a, out: pytorch_calls.append(a[0].shape))
    inner = sd1.img2img(inner=True, prompt="a face", steps=2, init_latent=crop, denoising_strength=0.5, seed=3)
    assert len(calls) == len(pytorch_calls) == 2 and {s[2] for s in pytorch_calls} == {24}
    assert capsys.readouterr().out.count("using the PyTorch UNet for a call no engine takes") == 1
    sd1.img2img(inner=True, prompt="a face", steps=2, init_latent=torch.randn(1, 4, 8, 8), denoising_strength=0.5)
    assert len(calls) == 4 and len(pytorch_calls) == 2  # a covered inner job runs on the engine again
    handle.remove()
    sd1.shared.opts.set("sd_unet", "None")
    plain = sd1.img2img(inner=True, prompt="a face", steps=2, init_latent=crop, denoising_strength=0.5, seed=3)
    assert torch.equal(inner.images[0], plain.images[0])


@pytest.mark.catalogue("sampling")
def test_a_job_with_a_hypernetwork_is_never_silently_run_without_it(sd1, monkeypatch):
    """The WebUI's attention applies hypernetworks (``<hypernet:…>``); an engine cannot: such a job is stopped
    before its first step naming them, or runs on PyTorch with the fallback setting. They stay loaded after the
    job (the WebUI never unloads them), until a job without one."""
    sd1.shared.hypernetworks["tinyhn"] = "tinyhn.pt"
    calls = record_calls(sd1, monkeypatch)
    with pytest.raises(Exception, match="uses the hypernetwork tinyhn, which changes attention") as caught:
        sd1.txt2img(prompt="a cat <hypernet:tinyhn:0.7>", steps=2)
    assert caught.value.status_code == 409 and calls == []
    sd1.shared.opts.set("trt_on_uncovered", "fallback")
    result = sd1.txt2img(prompt="a cat <hypernet:tinyhn:0.7>", steps=2)
    assert "PyTorch UNet used" in result.info and calls == []
    sd1.shared.opts.set("trt_on_uncovered", "raise")
    sd1.txt2img(prompt="a cat", steps=2)  # no hypernetwork: the WebUI empties the list, the engine runs
    assert len(calls) == 2


def test_an_export_after_a_hypernetwork_job_traces_without_it(sd1, monkeypatch):
    """The last job's hypernetworks stay loaded; a build's export must not trace them (the engine would apply
    them to every job), and they are put back afterwards for the WebUI."""
    sd1.shared.hypernetworks["tinyhn"] = "tinyhn.pt"
    sd1.shared.opts.set("trt_on_uncovered", "fallback")
    sd1.txt2img(prompt="a cat <hypernet:tinyhn:0.7>", steps=2)
    assert [h.name for h in sd1.shared.loaded_hypernetworks] == ["tinyhn"]
    export_stage = sd1.ext_module.export_stage
    seen = []

    def spy(unet, *args, **kwargs):
        seen.append([h.name for h in sd1.shared.loaded_hypernetworks])
        return export_stage(unet, *args, **kwargs)

    monkeypatch.setattr(sd1.ext_module, "export_stage", spy)
    pytest.importorskip("tensorrt_rtx")
    sd1.shared.opts.set("trt_backend", "tensorrt_rtx")
    sd1.shared.opts.set("trt_compute_capability", "8.9")
    profile = sd1.module("trt_lib.model.profiles").Profile.static(1, 64, 64)
    job = sd1.EXT.submit_build([profile])
    assert sd1.EXT.jobs.wait(job.id, timeout=120).state == "done", job.message
    assert seen == [[]]
    assert [h.name for h in sd1.shared.loaded_hypernetworks] == ["tinyhn"]
