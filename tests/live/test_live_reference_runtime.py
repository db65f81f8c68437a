"""Issue 14: with "Run engines with: ONNX Runtime (reference)", jobs on an engine give the PyTorch UNet's image.

On a machine without a GPU (the kit's): a plain engine of 64-128 px and 75-150 tokens, selected as ``sd_unet``,
against ``None`` for the same job: a plain job, a non-square one, the hires fix at 2x, and a prompt over 75
tokens; the infotext names ONNX Runtime. A prompt LoRA needs a refittable engine of the loaded checkpoint, which
TensorRT for RTX builds only with a GPU it supports: that test runs where one is listed, else it is skipped.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_lora import write_lora
from live_webui import PREFIX, Webui, built, message

pytestmark = pytest.mark.live

TOLERANCE = int(os.environ.get("WEBUI_REFERENCE_TOLERANCE", "2"))
"""Largest pixel difference (0-255) between the engine's image and PyTorch's (fp32 on the CPU: 0-1)."""
DYNAMIC = {"batch": 1, "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 150]}
LONG_PROMPT = "a photo of a cat, " + ", ".join(f"detail {i}" for i in range(20))
HIRES = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.5,
         "hr_second_pass_steps": 2}
CASES = {
    "plain": ("a photo of a cat", {}),
    "non-square": ("a photo of a cat", {"width": 128, "height": 64}),
    "hires fix 2x": ("a photo of a cat", HIRES),
    "prompt over 75 tokens": (LONG_PROMPT, {}),
}


def _run(webui: Webui, prompt: str, sd_unet: str, **fields: Any) -> tuple[bytes, str]:
    from PIL import Image

    r = webui.txt2img(prompt, sd_unet=sd_unet, steps=3, **fields)
    assert r.status_code == 200, f"txt2img on {sd_unet}: HTTP {r.status_code}: {message(r)}"
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0].split(",", 1)[-1])))
    return image.convert("RGB").tobytes(), json.loads(r.json()["info"])["infotexts"][0]


def _max_diff(a: bytes, b: bytes) -> int:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def _reference_only(entry: dict[str, Any], label: str) -> None:
    if not entry["runs_here"] or not label.startswith("[ORT]"):
        pytest.skip("select Settings → TensorRT → run engines with \"ONNX Runtime (reference)\" for these tests "
                    f"(the entry is {label!r}, runs here: {entry['runs_here']})")


def _mine(webui: Webui) -> list[dict[str, Any]]:
    name = webui.loaded_checkpoint()["model_name"]
    return [e for e in webui.engines() if e["checkpoint"] == name and e["usable"]]


def test_a_prompt_lora_on_a_refittable_engine_gives_pytorchs_image(webui: Webui) -> None:
    refittable = [e for e in _mine(webui) if e.get("refittable") and not e.get("loras")]
    if not refittable:
        pytest.skip("no refittable engine of the loaded checkpoint: TensorRT for RTX builds them only with a CUDA "
                    "GPU it supports (not on a CPU-only machine, nor on an H200); build one there and copy it here")
    checkpoint = Path(webui.loaded_checkpoint()["filename"])
    lora = f"{PREFIX}_reference"
    path = checkpoint.parent.parent / "Lora" / f"{lora}.safetensors"
    write_lora(checkpoint, path, ("attn1.to_q", "attn2.to_k"), seed=3)
    webui.post("/sdapi/v1/refresh-loras")
    try:
        label = webui.engine_label(webui.loaded_checkpoint()["model_name"])
        _reference_only(refittable[0], label)
        prompt = f"a photo of a cat <lora:{lora}:0.8>"
        pytorch, _ = _run(webui, prompt, "None")
        assert pytorch != _run(webui, "a photo of a cat", "None")[0], "the LoRA did not change PyTorch's image"
        engine, info = _run(webui, prompt, label)
        assert _max_diff(engine, pytorch) <= TOLERANCE and "ONNX Runtime" in info
    finally:
        path.unlink(missing_ok=True)
        webui.post("/sdapi/v1/refresh-loras")


@pytest.fixture(scope="module")
def engine(webui: Webui) -> Iterator[str]:
    """A plain engine for these tests, deleted after them; its ``sd_unet`` entry."""
    with built(webui, DYNAMIC) as entry:
        label = webui.engine_label(webui.loaded_checkpoint()["model_name"])
        _reference_only(entry, label)
        yield label


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_job_on_the_engine_gives_pytorchs_image(webui: Webui, engine: str, case: str) -> None:
    prompt, fields = CASES[case]
    pytorch, pytorch_info = _run(webui, prompt, "None", **fields)
    got, info = _run(webui, prompt, engine, **fields)
    assert _max_diff(got, pytorch) <= TOLERANCE, f"{case}: the engine's image differs from PyTorch's"
    assert 'UNet runtime: "ONNX Runtime (reference' in info, info
    assert "UNet runtime" not in pytorch_info
