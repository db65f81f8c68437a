"""Jobs whose hires pass runs another checkpoint (``hr_checkpoint_name``, of the same config: the WebUI loads
its weights into the loaded model and applies sd_unet again): each pass is checked against, and run on, what
runs it: the first checkpoint's engine, then the second checkpoint's own engine or its PyTorch UNet."""

from __future__ import annotations

import pytest

from trt_lib.engines.onnx_runtime import reference_runner

SMALL = {"batch": [1, 1, 4], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 150]}
WIDE = {"batch": [1, 1, 4], "height": [64, 64, 256], "width": [64, 64, 256], "tokens": [75, 75, 150]}


@pytest.fixture
def two(webui, monkeypatch, request):
    """"first" loaded with an engine up to 128 px, "second" of the same family (other weights, or seed 0 as
    well when parametrised indirectly with 0, so that an engine of it, made from the seed-0 export, is its own);
    engines loaded are recorded by checkpoint."""
    webui.with_engine("first.safetensors", "sd1", SMALL)
    webui.add_checkpoint("second.safetensors", "sd1", seed=getattr(request, "param", 1))
    webui.loaded_engines = []

    def runner(store, entry):
        webui.loaded_engines.append(entry.checkpoint)
        return reference_runner(store, entry)

    monkeypatch.setattr(webui.EXT, "runner_factory", runner)
    return webui


def hires(webui):
    """192 px hires pass on "second": over the first checkpoint's engine."""
    return webui.txt2img(prompt="a cat", negative_prompt="blurry", steps=2, seed=7, enable_hr=True, hr_scale=3.0,
                         hr_checkpoint_name="second.safetensors")


def pytorch_only(webui):
    webui.shared.opts.set("sd_unet", "None")
    try:
        return hires(webui)
    finally:
        webui.shared.opts.set("sd_unet", "Automatic")


def relative(got, want) -> float:
    return float((got.images[0] - want.images[0]).norm() / want.images[0].norm())


def assert_close(got, want) -> None:
    """ONNX Runtime vs PyTorch in fp32, over two passes."""
    assert relative(got, want) <= 5e-4, relative(got, want)


@pytest.mark.catalogue("sampling")
@pytest.mark.parametrize("sd_unet", ["Automatic", "[TRT] first"])
def test_a_hires_checkpoint_without_engines_runs_its_pytorch_unet(two, capsys, sd_unet):
    two.shared.opts.set("sd_unet", sd_unet)
    out = hires(two)
    assert two.loaded_engines == ["first"] and out.extra_generation_params["Hires checkpoint"].startswith("second")
    if sd_unet != "Automatic":
        assert "second has no engine here; running its PyTorch UNet" in capsys.readouterr().out
    two.shared.opts.set("sd_unet", sd_unet)
    assert_close(out, pytorch_only(two))
    two.shared.opts.set("sd_unet", "None")
    on_first = two.txt2img(prompt="a cat", negative_prompt="blurry", steps=2, seed=7, enable_hr=True, hr_scale=3.0)
    assert relative(out, on_first) > 1e-2  # the second checkpoint's UNet ran the hires pass
    two.shared.opts.set("sd_unet", sd_unet)
    two.txt2img(prompt="a cat", steps=2)  # the next job: the first checkpoint and its engine again
    assert two.shared.sd_model.sd_checkpoint_info.model_name == "first"
    assert two.sd_unet.current_unet_option.label == "[TRT] first"


@pytest.mark.catalogue("sampling")
@pytest.mark.parametrize("two", [0], indirect=True, ids=["same weights"])
def test_a_hires_checkpoint_with_its_own_engine_runs_it_with_automatic(two):
    two.add_engine("second.safetensors", "sd1", WIDE)
    two.sd_unet.list_unets()
    out = hires(two)
    assert two.loaded_engines == ["first", "second"]
    assert_close(out, pytorch_only(two))


@pytest.mark.catalogue("sampling")
@pytest.mark.parametrize("two", [0], indirect=True, ids=["same weights"])
def test_a_hires_pass_that_its_checkpoints_engine_does_not_cover_is_refused(two):
    narrow = dict(WIDE, width=[64, 64, 128])
    two.add_engine("second.safetensors", "sd1", narrow)
    two.sd_unet.list_unets()
    with pytest.raises(Exception, match="No TensorRT engine for second.* covers") as e:
        hires(two)
    assert "192x192 px" in str(e.value)


def refined(webui):
    """Two of four steps on "first" (its engine covers the size), then the refiner switch to "second"."""
    return webui.txt2img(prompt="a cat", negative_prompt="blurry", steps=4, seed=7,
                         refiner_checkpoint="second.safetensors", refiner_switch_at=0.5)


@pytest.mark.catalogue("sampling")
@pytest.mark.parametrize("sd_unet", ["Automatic", "[TRT] first"])
def test_a_refiner_without_engines_runs_its_pytorch_unet_after_the_switch(two, sd_unet):
    two.shared.opts.set("sd_unet", sd_unet)
    out = refined(two)
    assert "second" not in two.loaded_engines and out.extra_generation_params["Refiner"].startswith("second")
    two.shared.opts.set("sd_unet", "None")
    assert_close(out, refined(two))
    assert relative(out, two.txt2img(prompt="a cat", negative_prompt="blurry", steps=4, seed=7)) > 1e-2


@pytest.mark.catalogue("sampling")
@pytest.mark.parametrize("two", [0], indirect=True, ids=["same weights"])
def test_a_refiner_with_its_own_engine_runs_it_with_automatic(two):
    two.add_engine("second.safetensors", "sd1", SMALL)
    two.sd_unet.list_unets()
    out = refined(two)
    assert two.loaded_engines == ["first", "second"]
    two.shared.opts.set("sd_unet", "None")
    assert_close(out, refined(two))


@pytest.mark.catalogue("sampling")
def test_a_hires_checkpoint_of_another_config_runs_its_own_engine_with_automatic(two):
    """A checkpoint of another config is loaded as a new model, after which the WebUI applies no sd_unet
    choice: with Automatic the hires pass still gets that checkpoint's own engine."""
    two.add_checkpoint("other.safetensors", "sd2")
    two.add_engine("other.safetensors", "sd2", WIDE)
    two.sd_unet.list_unets()
    out = two.txt2img(prompt="a cat", negative_prompt="blurry", steps=2, seed=7, enable_hr=True, hr_scale=3.0,
                      hr_checkpoint_name="other.safetensors")
    assert two.loaded_engines == ["first", "other"]
    two.shared.opts.set("sd_unet", "None")
    assert_close(out, two.txt2img(prompt="a cat", negative_prompt="blurry", steps=2, seed=7, enable_hr=True,
                                  hr_scale=3.0, hr_checkpoint_name="other.safetensors"))
