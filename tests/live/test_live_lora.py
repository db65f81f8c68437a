"""Issue 12: after PyTorch jobs with prompt LoRAs, a plain engine holds exactly the checkpoint's weights and a
bake exactly the checkpoint plus its own LoRAs.

Proof by the files themselves: the engine's ONNX initializers (in the engine folder on this machine), read
through the weight map recorded beside the export, against the checkpoint file's tensors. The LoRAs are made
here from the loaded checkpoint's layers, written into the WebUI's LoRA folder and removed afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from live_lora import weights_differing, write_lora
from live_webui import PREFIX, STATIC_64, Webui, built

pytestmark = pytest.mark.live

PROMPT_LORA_LAYERS = ("attn1.to_q", "attn2.to_k", "proj_in")
"""What the prompt LoRA changes: more layers than the baked one, so a leftover shows outside the bake."""
BAKED_LORA_LAYERS = ("attn1.to_q",)


@dataclass
class Lora:
    name: str
    deltas: dict[str, torch.Tensor]
    """UNet state_dict key -> change at weight 1."""


@pytest.fixture(scope="module")
def checkpoint(webui: Webui) -> Path:
    path = Path(webui.loaded_checkpoint()["filename"])
    assert path.is_file(), f"the loaded checkpoint {path} is not on this machine"
    assert path.suffix == ".safetensors", "these tests read the checkpoint's tensors from a .safetensors file"
    return path


@pytest.fixture(scope="module")
def loras(webui: Webui, checkpoint: Path) -> Iterator[tuple[Lora, Lora]]:
    """A prompt LoRA and a LoRA to bake, in ``WEBUI_LORA_DIR`` (default: models/Lora beside the checkpoints)."""
    folder = Path(os.environ.get("WEBUI_LORA_DIR") or checkpoint.parent.parent / "Lora")
    made = []
    try:
        out = []
        for seed, layers in ((1, PROMPT_LORA_LAYERS), (2, BAKED_LORA_LAYERS)):
            name = f"{PREFIX}_{secrets.token_hex(3)}"
            path = folder / f"{name}.safetensors"
            made.append(path)
            out.append(Lora(name, write_lora(checkpoint, path, layers, seed)))
        webui.post("/sdapi/v1/refresh-loras")
        known = {lo["name"] for lo in webui.get("/sdapi/v1/loras")}
        assert {lo.name for lo in out} <= known, f"the WebUI does not list the LoRAs written into {folder}"
        yield out[0], out[1]
    finally:
        webui.txt2img_pixels("a photo of a cat")  # a job without LoRAs: the Lora extension restores its layers
        for path in made:
            path.unlink(missing_ok=True)
        webui.post("/sdapi/v1/refresh-loras")


def _prompt_lora_job(webui: Webui, lora: Lora) -> None:
    """A PyTorch job with the LoRA in the prompt, checked to change the image (so the WebUI merged it)."""
    plain = webui.txt2img_pixels("a photo of a cat")
    with_lora = webui.txt2img_pixels(f"a photo of a cat <lora:{lora.name}:1>")
    assert plain != with_lora, f"<lora:{lora.name}:1> did not change the image: the WebUI did not apply it"


def test_a_plain_engine_after_a_prompt_lora_job_holds_exactly_the_checkpoint(
        webui: Webui, checkpoint: Path, loras: tuple[Lora, Lora]) -> None:
    prompt_lora, _ = loras
    _prompt_lora_job(webui, prompt_lora)
    with built(webui, STATIC_64) as entry:
        assert entry["loras"] == []
        wrong = weights_differing(webui, entry, checkpoint, {})
    assert not wrong, (f"the plain engine holds {len(wrong)} weights that are not the checkpoint's (the prompt LoRA "
                       f"changes {len(prompt_lora.deltas)}): {dict(list(wrong.items())[:5])}")


def test_a_bake_after_a_prompt_lora_job_holds_the_checkpoint_plus_its_lora(
        webui: Webui, checkpoint: Path, loras: tuple[Lora, Lora]) -> None:
    prompt_lora, baked = loras
    _prompt_lora_job(webui, prompt_lora)
    with built(webui, STATIC_64, loras=[{"name": baked.name, "weight": 1.0}]) as entry:
        assert [lo["name"] for lo in entry["loras"]] == [baked.name]
        wrong = weights_differing(webui, entry, checkpoint, baked.deltas)
    assert not wrong, f"{len(wrong)} weights of the baked engine are wrong: {dict(list(wrong.items())[:5])}"
