"""Tiny real-architecture ControlNets, after sd-webui-controlnet v1.1.455 scripts/cldm.py.

``ControlNet`` (cldm.py:63-400) is a copy of the UNet's input blocks and middle block, a hint block that
brings the control image to the latent size and width (``input_hint_block``), and one 1x1 "zero conv" per
skip connection plus ``middle_block_out``; ``forward`` (cldm.py:352-398) adds the guided hint after the first
input block and returns one residual per skip connection, the middle block's last. ``PlugableControlModel``
(cldm.py:18-33) is the wrapper ControlNet units hold (``param.control_model``; ``.control_model`` inside).
Built here from a tiny UNet of the family (its ldm-layout view, other random weights), so the residual count,
widths and sizes are the UNet's own; the zero convs get random weights so that the residuals matter.
"""

import copy
import sys

import torch
from torch import nn


class ControlNet(nn.Module):
    def __init__(self, ldm_unet: nn.Module, hint_channels: int = 3) -> None:
        super().__init__()
        self.model_channels = ldm_unet.model_channels
        self.time_embed = copy.deepcopy(ldm_unet.time_embed)
        if hasattr(ldm_unet, "label_emb"):
            self.label_emb = copy.deepcopy(ldm_unet.label_emb)
        self.input_blocks = copy.deepcopy(ldm_unet.input_blocks)
        self.middle_block = copy.deepcopy(ldm_unet.middle_block)
        self._embedding = type(ldm_unet).__module__
        width = self.model_channels
        self.input_hint_block = nn.Sequential(  # 8x down to the latent (cldm.py:163-179, fewer layers)
            nn.Conv2d(hint_channels, 16, 3, padding=1), nn.SiLU(),
            nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(16, width, 3, padding=1, stride=2))
        with torch.no_grad():  # the width of each skip connection, from one small call of the copied blocks
            t_emb = sys.modules[self._embedding].timestep_embedding(torch.zeros(1), self.model_channels)
            emb, h, widths = self.time_embed(t_emb), torch.zeros(1, self.input_blocks[0][0].in_channels, 8, 8), []
            context = torch.zeros(1, 1, _context_dim(ldm_unet))
            for block in self.input_blocks:
                h = block(h, emb, context)
                widths.append(h.shape[1])
        self.zero_convs = nn.ModuleList(nn.Conv2d(w, w, 1) for w in widths)
        self.middle_block_out = nn.Conv2d(widths[-1], widths[-1], 1)

    def forward(self, x, hint, timesteps, context, y=None, **kwargs):
        timestep_embedding = sys.modules[self._embedding].timestep_embedding
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False).to(x.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        guided_hint = self.input_hint_block(hint)
        outs, h = [], x
        for module, zero_conv in zip(self.input_blocks, self.zero_convs):
            h = module(h, emb, context)
            if guided_hint is not None:
                h = h + guided_hint
                guided_hint = None
            outs.append(zero_conv(h))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h))
        return outs


def _context_dim(unet: nn.Module) -> int:
    return next(m.in_features for name, m in unet.named_modules() if name.endswith("attn2.to_k"))


class PlugableControlModel(nn.Module):
    def __init__(self, control_model: ControlNet) -> None:
        super().__init__()
        self.control_model = control_model

    def forward(self, *args, **kwargs):
        return self.control_model(*args, **kwargs)
