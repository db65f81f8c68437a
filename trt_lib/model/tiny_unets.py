"""Random-weight UNets with the WebUI's call signature, for tests, the demo and device benchmarks.

They are diffusers ``UNet2DConditionModel`` s (real architecture, so exports exercise every op a real
checkpoint has) whose ``forward`` takes what the WebUI passes to the UNet: ``(x, timesteps, context, y=None)``.
SDXL's ``y`` (pooled text plus size embedding, already computed by the WebUI) goes through a
Linear-SiLU-Linear added to the time embedding, which is what sgm's ``label_emb`` does; diffusers calls
that ``class_embed_type="projection"``.

The architecture is chosen from the family's traits (context width and ``y`` width), never its name, so a
new family file with known traits gets a UNet without code changes. ``tiny=True`` gives a two-level UNet
that exports in a second or two; ``tiny=False`` gives the real sizes, for device benchmarks only.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor

from ..errors import FamilyError
from .families import Family, get_family


class WebuiUnet(UNet2DConditionModel):
    """A diffusers UNet called the way the WebUI calls its UNet; returns the predicted sample tensor."""

    prediction_type: str = "eps"
    """What the model predicts (``eps`` or ``v``); read by :func:`trt_lib.model.families.unet_traits`."""

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,  # type: ignore[override]
                y: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x, timesteps, context, class_labels=y, return_dict=False)[0]


# Real-size architectures, keyed by (context_dim, adm_dim); values as in the released checkpoints' configs.
_SD_BLOCKS = {
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
}
_REAL: dict[tuple[int, int | None], dict[str, Any]] = {
    (768, None): {**_SD_BLOCKS, "attention_head_dim": 8},
    (1024, None): {**_SD_BLOCKS, "attention_head_dim": (5, 10, 20, 20), "use_linear_projection": True},
    (2048, 2816): {
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (320, 640, 1280), "layers_per_block": 2,
        "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
        "use_linear_projection": True,
    },
    (1280, 2560): {
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (384, 768, 1536, 1536), "layers_per_block": 2,
        "transformer_layers_per_block": 4, "attention_head_dim": (6, 12, 24, 24),
        "use_linear_projection": True,
    },
}


def _tiny(adm_dim: int | None, linear: bool) -> dict[str, Any]:
    """Two levels, one layer each; SDXL-style families put attention only on the lower level, like SDXL."""
    sdxl = adm_dim is not None
    return {
        "down_block_types": ("DownBlock2D" if sdxl else "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D" if sdxl else "CrossAttnUpBlock2D"),
        "block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 8,
        "attention_head_dim": 2, "transformer_layers_per_block": (1, 2) if sdxl else 1,
        "use_linear_projection": linear,
    }


def unet_config(family: Family, *, tiny: bool = True) -> dict[str, Any]:
    """The diffusers config for ``family``'s UNet (in/out channels, context and ``y`` widths from the family)."""
    traits = family.traits
    key = (traits.context_dim, traits.adm_dim)
    if key not in _REAL:
        raise FamilyError(f"no UNet architecture known for {family.label} (context {traits.context_dim}, "
                          f"y width {traits.adm_dim})")
    real = _REAL[key]
    config = _tiny(traits.adm_dim, real.get("use_linear_projection", False)) if tiny else dict(real)
    config.update(in_channels=traits.in_channels, out_channels=family.out_channels,
                  cross_attention_dim=traits.context_dim)
    if traits.adm_dim:
        config.update(class_embed_type="projection", projection_class_embeddings_input_dim=traits.adm_dim)
    return config


def make_unet(family: Family | str, *, tiny: bool = True, seed: int = 0,
              dtype: torch.dtype = torch.float32) -> WebuiUnet:
    """A random-weight UNet of ``family`` (the same weights for the same seed), in eval mode.

    Attention uses diffusers' plain ``AttnProcessor`` so the ONNX holds MatMul-Softmax-MatMul, which
    TensorRT fuses, rather than an opaque scaled-dot-product op.
    """
    fam = get_family(family) if isinstance(family, str) else family
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = WebuiUnet(**unet_config(fam, tiny=tiny))
    unet.set_attn_processor(AttnProcessor())
    unet.prediction_type = fam.traits.prediction
    return unet.to(dtype).eval()
