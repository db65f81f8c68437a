"""Issue 11, defect 1: an engine built on a checkpoint whose file was then replaced by other weights of the same
name is never used for the new weights: not offered, not picked by "Automatic", listed as unusable.

Works on a copy of the loaded checkpoint (``livetest_hash_…`` beside it), so the user's files are untouched;
the copy, its engine and the loaded checkpoint are put back afterwards.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from live_lora import UNET
from live_webui import PREFIX, STATIC_64, Webui, message

pytestmark = pytest.mark.live


@pytest.fixture
def checkpoint_copy(webui: Webui) -> Iterator[tuple[str, Path]]:
    """A copy of the loaded checkpoint (and its yaml), loaded; the original is loaded again at the end."""
    original = webui.loaded_checkpoint()
    source = Path(original["filename"])
    assert source.suffix == ".safetensors", "this test rewrites a .safetensors checkpoint"
    name = f"{PREFIX}_hash_{secrets.token_hex(3)}"
    target = source.with_name(name + source.suffix)
    made = [target]
    shutil.copyfile(source, target)
    if source.with_suffix(".yaml").is_file():
        made.append(target.with_suffix(".yaml"))
        shutil.copyfile(source.with_suffix(".yaml"), made[-1])
    try:
        webui.load_checkpoint(name)
        yield name, target
    finally:
        webui.load_checkpoint(original["model_name"])
        for path in made:
            path.unlink(missing_ok=True)
        webui.post("/sdapi/v1/refresh-checkpoints")


def _replace_weights(path: Path) -> None:
    """Overwrite the checkpoint with other UNet weights under the same name (atomically, new mtime)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    gen = torch.Generator().manual_seed(7)
    for key, t in tensors.items():
        if key.startswith(UNET) and t.is_floating_point():
            tensors[key] = (t.float() + 0.05 * torch.randn(t.shape, generator=gen)).to(t.dtype)
    temp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(temp))
    os.replace(temp, path)


def test_an_engine_of_a_replaced_checkpoint_is_never_used(webui: Webui, checkpoint_copy: tuple[str, Path]) -> None:
    name, path = checkpoint_copy
    entry = webui.build(STATIC_64)
    try:
        assert entry["checkpoint"] == name
        label = webui.engine_label(name)
        _replace_weights(path)
        others = [m["model_name"] for m in webui.checkpoints() if m["model_name"] != name]
        webui.load_checkpoint(others[0])  # the WebUI does not reload the file it has loaded: load another first
        webui.load_checkpoint(name)
        new_hash = webui.loaded_checkpoint().get("sha256")
        assert new_hash and new_hash != entry["checkpoint_hash"], "precondition: the WebUI hashed the new weights"

        problems = []
        listed = webui.engine(entry["id"])
        if listed["usable"]:
            problems.append(f"GET /engines lists it as usable (problem: {listed.get('problem')!r})")
        # the entry may stay in the dropdown, but only so that a job naming it gets the reason (an unlisted label
        # would silently run the PyTorch UNet): then naming it must be refused with the mismatch message
        kept_for_the_reason = label in webui.unet_choices()
        auto = webui.txt2img("a cat", sd_unet="Automatic")
        if auto.status_code != 200:
            problems.append(f"a job on Automatic (must run the PyTorch UNet) answered HTTP {auto.status_code}: "
                            f"{message(auto)[:200]}")
        named = webui.txt2img("a cat", sd_unet=label)
        refused = 400 <= named.status_code < 500 and re.search(r"another version|sha256|replaced", message(named))
        if not refused and (kept_for_the_reason or named.status_code != 200):
            problems.append(f"a job naming {label} answered HTTP {named.status_code} without the mismatch message: "
                            f"{message(named)[:200]}")
        assert not problems, "the engine of the replaced checkpoint is still used: " + "; ".join(problems)
    finally:
        webui.delete_engine(entry["id"])
