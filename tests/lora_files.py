"""LoRA and LoHa files in kohya's key layout for the tiny test UNets, and the merge done by hand (the
formula, independent of the WebUI's Lora code) that tests compare against."""

from __future__ import annotations

import copy
from pathlib import Path

import torch


def layer_names(unet: torch.nn.Module) -> list[str]:
    """Three layers of different kinds: an attention Linear, a 3x3 Conv2d, and the attention projection."""
    names = [n for n, _ in unet.named_modules()]
    return [next(n for n in names if n.endswith("attn1.to_q")),
            next(n for n in names if n.endswith("resnets.0.conv1")),
            next(n for n in names if n.endswith("proj_in"))]


def kohya_key(name: str) -> str:
    return "lora_unet_" + name.replace(".", "_")


def make_lora(unet: torch.nn.Module, names: list[str], *, rank: int = 4, alpha: float = 2.0, seed: int = 0,
              loha: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a LoRA (lora_down/lora_up/alpha) or LoHa (hada_*) for the layers ``names``."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        weight = unet.get_submodule(name).weight
        rows, cols = weight.shape[0], weight[0].numel()
        key = kohya_key(name)
        if loha:
            for part in ("w1", "w2"):
                out[f"{key}.hada_{part}_a"] = torch.randn(rows, rank, generator=gen) * 0.3
                out[f"{key}.hada_{part}_b"] = torch.randn(rank, cols, generator=gen) * 0.3
        else:
            down_shape = (rank, *weight.shape[1:]) if weight.dim() == 4 else (rank, cols)
            up_shape = (rows, rank, 1, 1) if weight.dim() == 4 else (rows, rank)
            out[f"{key}.lora_down.weight"] = torch.randn(down_shape, generator=gen) * 0.3
            out[f"{key}.lora_up.weight"] = torch.randn(up_shape, generator=gen) * 0.3
        out[f"{key}.alpha"] = torch.tensor(alpha)
    return out


def write(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    import safetensors.torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    return path


def merged_by_hand(unet: torch.nn.Module, loras: list[tuple[dict[str, torch.Tensor], float]]) -> torch.nn.Module:
    """A copy of ``unet`` with W += multiplier * alpha / rank * delta for each (tensors, multiplier)."""
    out = copy.deepcopy(unet)
    with torch.no_grad():
        for tensors, multiplier in loras:
            for name, module in out.named_modules():
                key = kohya_key(name)
                if f"{key}.alpha" not in tensors:
                    continue
                w = module.weight
                if f"{key}.hada_w1_a" in tensors:
                    t = {p: tensors[f"{key}.hada_{p}"].double() for p in ("w1_a", "w1_b", "w2_a", "w2_b")}
                    delta = (t["w1_a"] @ t["w1_b"]) * (t["w2_a"] @ t["w2_b"])
                    rank = t["w1_b"].shape[0]
                else:
                    down = tensors[f"{key}.lora_down.weight"].double()
                    delta = tensors[f"{key}.lora_up.weight"].double().flatten(1) @ down.flatten(1)
                    rank = down.shape[0]
                scale = multiplier * tensors[f"{key}.alpha"].item() / rank
                w.copy_((w.double() + scale * delta.reshape(w.shape)).to(w.dtype))
    return out
