"""Tiny kohya-format LoRAs made from a checkpoint file's own UNet layers, and the UNet change each makes.

Keys are ``lora_unet_<compvis layer path, dots as underscores>``, which the WebUI's Lora extension maps onto
``diffusion_model_…`` layers (its ``lora_unet`` -> ``diffusion_model`` fallback in ``networks.load_network``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from live_webui import Webui, engine_dir

UNET = "model.diffusion_model."
RANK = 4


def write_lora(checkpoint: Path, out: Path, layer_suffixes: Sequence[str], seed: int,
               scale: float = 0.2) -> dict[str, torch.Tensor]:
    """Write a LoRA for every UNet layer of ``checkpoint`` whose path ends with one of ``layer_suffixes``;
    return the change it makes at weight 1 per UNet ``state_dict`` key (``…weight``), in float64."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    with safe_open(str(checkpoint), "pt") as f:
        for key in f.keys():
            layer = key[len(UNET):-len(".weight")] if key.startswith(UNET) and key.endswith(".weight") else ""
            shape = f.get_slice(key).get_shape() if layer else []
            if not layer.endswith(tuple(layer_suffixes)) or len(shape) not in (2, 4) or shape[2:] not in ([], [1, 1]):
                continue
            rows, cols = shape[0], shape[1]
            down = (torch.randn(RANK, cols, generator=gen) * scale).half()
            up = (torch.randn(rows, RANK, generator=gen) * scale).half()
            name = "lora_unet_" + layer.replace(".", "_")
            tail = (1, 1) if len(shape) == 4 else ()
            tensors[f"{name}.lora_down.weight"] = down.reshape(RANK, cols, *tail).contiguous()
            tensors[f"{name}.lora_up.weight"] = up.reshape(rows, RANK, *tail).contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(float(RANK)).half()  # alpha / rank = 1
            deltas[key[len(UNET):]] = (up.double() @ down.double()).reshape(shape)
    assert deltas, f"{checkpoint} has no UNet layer ending with {list(layer_suffixes)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(RANK),
                                           "ss_network_alpha": str(RANK)})
    return deltas


def weights_differing(webui: Webui, entry: dict, checkpoint: Path, deltas: dict[str, torch.Tensor]) -> dict[str, str]:
    """Per UNet weight of the engine's ONNX that is not the checkpoint's (+ ``deltas``), how it differs."""
    import onnx
    from onnx import numpy_helper
    from safetensors import safe_open

    from trt_lib.export.onnx_export import load_weight_map

    onnx_path = engine_dir(webui) / entry["onnx_file"]
    assert onnx_path.is_file(), f"the engine's ONNX {onnx_path} is not on this machine (set WEBUI_ENGINE_DIR)"
    weight_map = load_weight_map(onnx_path)
    initializers = {t.name: t for t in onnx.load(str(onnx_path), load_external_data=True).graph.initializer}
    wrong = {}
    with safe_open(str(checkpoint), "pt") as f:
        assert {UNET + ref.key for ref in weight_map.values()} <= set(f.keys()), "weight map keys not in checkpoint"
        for name, ref in weight_map.items():
            got = torch.from_numpy(numpy_helper.to_array(initializers[name]).copy()).double()
            base = f.get_tensor(UNET + ref.key)
            if ref.key in deltas:  # merged in float32 by the WebUI: equal up to rounding
                want = base.double() + deltas[ref.key]
                err = float((got - want).norm() / deltas[ref.key].norm())
                if err > 1e-3:
                    wrong[ref.key] = f"baked LoRA off by {err:.2e} of its change"
            elif not torch.equal(got, base.to(getattr(torch, ref.dtype)).double()):
                wrong[ref.key] = f"differs from the checkpoint by up to {float((got - base.double()).abs().max()):.3g}"
    assert len(weight_map) > 0
    return wrong
