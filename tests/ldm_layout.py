"""ldm-layout views of the tiny diffusers UNets, and ControlNet's UNet loop written as its extension runs it.

The WebUI loads ldm/sgm ``UNetModel`` s (``input_blocks``, ``middle_block``, ``output_blocks``, ``out``,
``time_embed``, ``label_emb``), and the ControlNet extension runs their loop itself. :class:`LdmView` arranges a
diffusers UNet's own submodules (the same weights) the way ldm's ``openaimodel.UNetModel`` does, so tests can
run ControlNet's loop and the ldm path of :class:`trt_lib.export.controlnet_export.ControlNetReady` on real UNets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000,
                       repeat_only: bool = False) -> torch.Tensor:
    """ldm's ``modules/diffusionmodules/util.timestep_embedding``: [cos, sin] of the frequencies (diffusers'
    embedding with ``flip_sin_to_cos`` and no shift, which the tiny UNets use)."""
    return get_timestep_embedding(timesteps, dim, flip_sin_to_cos=True, downscale_freq_shift=0,
                                  max_period=max_period)


class Step(torch.nn.Sequential):
    """ldm's ``TimestepEmbedSequential``: res-blocks get ``emb``, transformers get ``context``."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResnetBlock2D):
                h = layer(h, emb)
            elif isinstance(layer, Transformer2DModel):
                h = layer(h, encoder_hidden_states=context, return_dict=False)[0]
            else:
                h = layer(h)
        return h


class LdmView(torch.nn.Module):
    """A diffusers UNet's submodules in ldm's block layout; ``forward`` is ldm's ``UNetModel.forward``."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        widths = list(unet.config.block_out_channels)
        self.model_channels = widths[0]
        self.channel_mult = [w // widths[0] for w in widths]
        self.num_res_blocks = [unet.config.layers_per_block] * len(widths)
        self.time_embed = unet.time_embedding
        if unet.class_embedding is not None:  # sgm's label_emb: Sequential(Sequential(Linear, SiLU, Linear))
            ce = unet.class_embedding
            self.label_emb = torch.nn.Sequential(torch.nn.Sequential(ce.linear_1, ce.act, ce.linear_2))
        inputs = [Step(unet.conv_in)]
        for down in unet.down_blocks:
            attentions = getattr(down, "attentions", None)
            inputs += [Step(res, *([attentions[i]] if attentions else [])) for i, res in enumerate(down.resnets)]
            if down.downsamplers:
                inputs.append(Step(down.downsamplers[0]))
        self.input_blocks = torch.nn.ModuleList(inputs)
        mid = unet.mid_block
        self.middle_block = Step(mid.resnets[0], *(m for pair in zip(mid.attentions, mid.resnets[1:]) for m in pair))
        outputs = []
        for up in unet.up_blocks:
            attentions = getattr(up, "attentions", None)
            for i, res in enumerate(up.resnets):
                last = [up.upsamplers[0]] if up.upsamplers and i == len(up.resnets) - 1 else []
                outputs.append(Step(res, *([attentions[i]] if attentions else []), *last))
        self.output_blocks = torch.nn.ModuleList(outputs)
        self.out = torch.nn.Sequential(unet.conv_norm_out, unet.conv_act, unet.conv_out)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        return controlnet_unet_loop(self, x, timesteps, context, y, [0.0] * (len(self.input_blocks) + 1))


def aligned_adding(base: torch.Tensor, x: torch.Tensor | float, require_channel_alignment: bool) -> torch.Tensor:
    """sd-webui-controlnet v1.1.455 scripts/hook.py:245-265 (``aligned_adding``): a float 0.0 adds nothing;
    an inpainting UNet's residuals are zero-padded to its channels; other sizes are resized (nearest)."""
    if isinstance(x, float):
        return base if x == 0.0 else base + x
    if require_channel_alignment:
        padded = torch.zeros_like(base)
        padded[:, :x.shape[1], ...] = x
        x = padded
    if (x.shape[-2] > 1 or x.shape[-1] > 1) and x.shape[-2:] != base.shape[-2:]:
        x = torch.nn.functional.interpolate(x, size=tuple(base.shape[-2:]), mode="nearest")
    return base + x


def controlnet_unet_loop(unet: torch.nn.Module, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                         y: torch.Tensor | None, total_controlnet_embedding: Sequence[torch.Tensor | float],
                         require_inpaint_hijack: bool = False) -> torch.Tensor:
    """The U-Net loop of hook.py's ``forward`` (lines 796-835; T2I-Adapter additions left out): the last residual
    is added to the middle block's output, residual i to input block i's output as it is popped."""
    total = list(total_controlnet_embedding)
    hs = []
    emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels, repeat_only=False).to(x.dtype))
    if y is not None:
        emb = emb + unet.label_emb(y)
    h = x
    for module in unet.input_blocks:
        h = module(h, emb, context)
        hs.append(h)
    h = unet.middle_block(h, emb, context)
    h = aligned_adding(h, total.pop(), require_inpaint_hijack)
    for module in unet.output_blocks:
        h = torch.cat([h, aligned_adding(hs.pop(), total.pop(), require_inpaint_hijack)], dim=1)
        h = module(h, emb, context)
    return unet.out(h.type(x.dtype))
