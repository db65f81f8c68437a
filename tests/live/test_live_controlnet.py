"""Issue 16: ControlNet jobs on ControlNet-ready engines, through the real ControlNet extension
(Mikubill/sd-webui-controlnet v1.1.455) and a ControlNet model for the loaded checkpoint.

The engine must run here (Settings → TensorRT → run engines with "ONNX Runtime (reference)" where TensorRT
cannot run them): its images are compared pixel by pixel with the PyTorch UNet's for the same ControlNet unit.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from live_webui import STATIC_64, Webui, built, message

pytestmark = pytest.mark.live

MODEL = os.environ.get("WEBUI_CONTROLNET_MODEL", "tinycn_sd1")
"""The ControlNet model to use (a name from ``GET /controlnet/model_list``, hash left out)."""
TOLERANCE = int(os.environ.get("WEBUI_CONTROLNET_TOLERANCE", "2"))
"""Largest pixel difference (0-255) allowed between the engine's image and PyTorch's: fp32 on the CPU
(``--no-half``) agrees to 0-1; raise it for fp16 engines on a GPU."""
PROMPT = "a photo of a cat"
STEPS = 4


def _hint_png() -> str:
    """A 64 px hint with edges (a square and stripes), as base64 PNG."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64))
    draw = ImageDraw.Draw(image)
    draw.rectangle((16, 16, 47, 47), fill=(255, 255, 255))
    for x in range(0, 64, 8):
        draw.line((x, 0, x, 63), fill=(128, 128, 128))
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.fixture(scope="module")
def model(webui: Webui) -> str:
    """The ControlNet model's full name, or a skip naming what is missing."""
    r = webui.http.get("/controlnet/model_list")
    if r.status_code == 404:
        pytest.skip("the ControlNet extension (sd-webui-controlnet) is not installed in this WebUI")
    assert r.status_code == 200, f"GET /controlnet/model_list: HTTP {r.status_code}: {message(r)}"
    found = [m for m in r.json()["model_list"] if m.split(" [")[0] == MODEL]
    if not found:
        pytest.skip(f"no ControlNet model {MODEL!r} in {r.json()['model_list']} (WEBUI_CONTROLNET_MODEL; the kit's "
                    "tools/make_controlnet.py makes tinycn_sd1)")
    return found[0]


def _unit(model: str, **fields: Any) -> dict[str, Any]:
    unit = {"enabled": True, "module": "none", "model": model, "image": _hint_png(), "weight": 1.0}
    unit.update(fields)
    return unit


def _job(webui: Webui, sd_unet: str, *units: dict[str, Any], prompt: str = PROMPT, **fields: Any) -> Any:
    """``txt2img`` with these ControlNet units (none: ControlNet off)."""
    return webui.txt2img(prompt, sd_unet=sd_unet, **{"steps": STEPS, **fields},
                         alwayson_scripts={"controlnet": {"args": list(units)}} if units else {})


def _run(webui: Webui, sd_unet: str, *units: dict[str, Any], prompt: str = PROMPT, **fields: Any
         ) -> tuple[list[int], str]:
    """The first image's RGB values (ControlNet appends its hint image after the images) and infotext."""
    from PIL import Image

    r = _job(webui, sd_unet, *units, prompt=prompt, **fields)
    assert r.status_code == 200, f"txt2img on {sd_unet}: HTTP {r.status_code}: {message(r)}"
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0].split(",", 1)[-1])))
    return list(image.convert("RGB").tobytes()), json.loads(r.json()["info"])["infotexts"][0]


def _pixels(webui: Webui, sd_unet: str, *units: dict[str, Any], prompt: str = PROMPT, **fields: Any) -> list[int]:
    return _run(webui, sd_unet, *units, prompt=prompt, **fields)[0]


def _max_diff(a: list[int], b: list[int]) -> int:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def _label(webui: Webui) -> str:
    return webui.engine_label(webui.loaded_checkpoint()["model_name"])


def _mine(webui: Webui) -> list[dict[str, Any]]:
    name = webui.loaded_checkpoint()["model_name"]
    return [e for e in webui.engines() if e["checkpoint"] == name and e["usable"]]


def _runs_here(entry: dict[str, Any]) -> None:
    if not entry["runs_here"]:
        pytest.skip(f"engine {entry['id']} cannot run here: set Settings → TensorRT to run engines with "
                    "\"ONNX Runtime (reference)\" (POST /sdapi/v1/options trt_run_with) and restart")


def test_a_controlnet_job_with_only_a_plain_engine_is_refused_and_the_next_job_is_not_harmed(
        webui: Webui, model: str) -> None:
    if any(e["controlnet"] for e in _mine(webui)):
        pytest.skip("the loaded checkpoint already has a ControlNet-ready engine: delete it for this test")
    with built(webui, STATIC_64) as entry:
        _runs_here(entry)
        label = _label(webui)
        before = _pixels(webui, "None")
        r = _job(webui, label, _unit(model))
        assert 400 <= r.status_code < 500 and "ControlNet-ready" in message(r), \
            f"HTTP {r.status_code}: {message(r)}"
        # ControlNet marked the WebUI's cached prompt conds for that job (an extra first row) and clears that
        # cache in its UNet forward, which never ran: the same prompt without ControlNet must be as before,
        # on PyTorch (not attending to the mark) and on the engine (not refusing a context of 78 rows)
        assert _pixels(webui, "None") == before, "PyTorch's image changed after the refused ControlNet job"
        after = _job(webui, label)
        assert after.status_code == 200, f"the same prompt without ControlNet: HTTP {after.status_code}: " \
                                         f"{message(after)}"


@pytest.fixture(scope="module")
def ready(webui: Webui, model: str) -> Iterator[str]:
    """A ControlNet-ready 64 px engine, built for these tests and deleted after them; its ``sd_unet`` label."""
    with built(webui, STATIC_64, controlnet=True) as entry:
        assert entry["controlnet"] and entry["controlnet_residuals"], entry
        _runs_here(entry)
        yield _label(webui)


@pytest.mark.parametrize("fields", [{}, {"weight": 0.5}, {"guidance_start": 0.5}, {"guidance_end": 0.5}],
                         ids=["weight-1", "weight-0.5", "start-0.5", "end-0.5"])
def test_a_controlnet_job_on_the_engine_gives_pytorchs_image(
        webui: Webui, model: str, ready: str, fields: dict[str, Any]) -> None:
    plain = _pixels(webui, "None")
    pytorch = _pixels(webui, "None", _unit(model, **fields))
    assert pytorch != plain, f"the ControlNet unit {fields} did not change PyTorch's image: it was not applied"
    engine = _pixels(webui, ready, _unit(model, **fields))
    assert _max_diff(engine, pytorch) <= TOLERANCE, \
        f"engine vs PyTorch with ControlNet {fields}: max pixel difference {_max_diff(engine, pytorch)}"


DYNAMIC = {"batch": [1, 1, 2], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 75]}
JOBS = {
    "batch 2": ({"batch_size": 2}, [{}]),
    "hires fix 2x": ({"enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Latent", "denoising_strength": 0.6,
                      "hr_second_pass_steps": 2}, [{}]),
    "128x64": ({"width": 128, "height": 64}, [{}]),
    "ControlNet is more important": ({}, [{"control_mode": "ControlNet is more important"}]),
    "two units": ({}, [{"weight": 0.5}, {"weight": 0.7, "guidance_end": 0.5}]),
}


@pytest.fixture(scope="module")
def ready_dynamic(webui: Webui, model: str) -> Iterator[str]:
    """A ControlNet-ready engine of 64-128 px, batch 1-2, built for these tests and deleted after them."""
    with built(webui, DYNAMIC, controlnet=True) as entry:
        _runs_here(entry)
        yield _label(webui)


@pytest.mark.parametrize("case", list(JOBS))
def test_a_dynamic_ready_engine_gives_pytorchs_image(webui: Webui, model: str, ready_dynamic: str, case: str) -> None:
    fields, specs = JOBS[case]
    units = [_unit(model, **spec) for spec in specs]
    pytorch = _pixels(webui, "None", *units, **fields)
    assert pytorch != _pixels(webui, "None", **fields), f"{case}: ControlNet did not change PyTorch's image"
    engine = _pixels(webui, ready_dynamic, *units, **fields)
    assert _max_diff(engine, pytorch) <= TOLERANCE, f"{case}: max pixel difference {_max_diff(engine, pytorch)}"


def test_automatic_runs_a_controlnet_job_on_the_ready_engine(webui: Webui, model: str, ready: str) -> None:
    pytorch = _pixels(webui, "None", _unit(model))
    engine, info = _run(webui, "Automatic", _unit(model))
    assert "PyTorch UNet used" not in info, info
    assert _max_diff(engine, pytorch) <= TOLERANCE


def test_the_units_weight_reaches_the_engine(webui: Webui, model: str, ready: str) -> None:
    full, half = (_pixels(webui, ready, _unit(model, weight=w)) for w in (1.0, 0.5))
    assert _max_diff(full, half) > TOLERANCE, "weight 0.5 gives the engine the same image as weight 1"


def test_a_ready_engine_runs_jobs_without_controlnet(webui: Webui, ready: str) -> None:
    prompt = "a red fox"
    assert _max_diff(_pixels(webui, ready, prompt=prompt), _pixels(webui, "None", prompt=prompt)) <= TOLERANCE


def test_reference_only_is_refused_or_falls_back_as_the_setting_says(webui: Webui, model: str, ready: str) -> None:
    unit = {"enabled": True, "module": "reference_only", "model": "None", "image": _hint_png(), "weight": 1.0}
    r = _job(webui, ready, unit)
    assert r.status_code == 409 and "reference_only" in message(r) and "cannot run on a TensorRT engine" \
        in message(r), f"HTTP {r.status_code}: {message(r)}"
    webui.set_options({"trt_on_uncovered": "fallback"})
    try:
        fallback, info = _run(webui, ready, unit)
    finally:
        webui.set_options({"trt_on_uncovered": "raise"})
    assert "PyTorch UNet used" in info and "reference_only" in info, info
    assert fallback == _pixels(webui, "None", unit), "the fallback did not run the job as PyTorch does"
