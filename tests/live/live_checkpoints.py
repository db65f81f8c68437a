"""Copies of the loaded checkpoint with other UNet weights, for live tests that need a second checkpoint of the
same kind; the user's files are never touched."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from live_lora import UNET
from live_webui import PREFIX, Webui


@contextmanager
def checkpoint_copy(webui: Webui, tag: str, seed: int | None = None) -> Iterator[tuple[str, Path]]:
    """A copy of the loaded checkpoint (and its yaml) named ``livetest_<tag>_…``, with other UNet weights
    when ``seed`` is given, loaded; the original is loaded again and the copy removed at the end."""
    original = webui.loaded_checkpoint()
    source = Path(original["filename"])
    assert source.suffix == ".safetensors", "this test rewrites a .safetensors checkpoint"
    name = f"{PREFIX}_{tag}_{secrets.token_hex(3)}"
    target = source.with_name(name + source.suffix)
    made = [target]
    shutil.copyfile(source, target)
    if source.with_suffix(".yaml").is_file():
        made.append(target.with_suffix(".yaml"))
        shutil.copyfile(source.with_suffix(".yaml"), made[-1])
    try:
        if seed is not None:
            replace_weights(target, seed)
        webui.load_checkpoint(name)
        yield name, target
    finally:
        webui.load_checkpoint(original["model_name"])
        for path in made:
            path.unlink(missing_ok=True)
        webui.post("/sdapi/v1/refresh-checkpoints")


def replace_weights(path: Path, seed: int = 7) -> None:
    """Overwrite the checkpoint with other UNet weights under the same name (atomically, new mtime)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    gen = torch.Generator().manual_seed(seed)
    for key, t in tensors.items():
        if key.startswith(UNET) and t.is_floating_point():
            tensors[key] = (t.float() + 0.05 * torch.randn(t.shape, generator=gen)).to(t.dtype)
    temp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(temp))
    os.replace(temp, path)
