"""The UNet with one extra input per ControlNet residual, for ControlNet-ready exports.

The WebUI's ControlNet extension (sd-webui-controlnet v1.1.455, scripts/hook.py, the U-Net loop of its
``forward``, ~805-832) runs the UNet's own loop and adds residual ``i`` to input block ``i``'s output as the
output blocks pop it as their skip, and the last residual to the middle block's output. :class:`ControlNetReady`
does the same with the UNet's own submodules, so an export of it holds the same weights under the same names
(the weight map and LoRA refit are unchanged) and takes the residuals as inputs ``control_0 ... control_N-1``.

Two layouts are supported, read off the module (not the family): ldm/sgm ``UNetModel`` (``input_blocks``,
``middle_block``, ``output_blocks``, ``out``), which is what the WebUI loads, and diffusers
``UNet2DConditionModel``, which adds ControlNet residuals at the same places through its
``down_block_additional_residuals`` / ``mid_block_additional_residual`` arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from ..errors import ExportError


class ControlNetReady(torch.nn.Module):
    """``unet`` called as ``(x, timesteps, context[, y], control_0, ..., control_N-1)``.

    It shares the UNet's submodules, parameters and buffers under the UNet's own names (no ``unet.`` prefix),
    so ``state_dict`` keys, and hence the ONNX initializer names, are the UNet's.
    """

    def __init__(self, unet: torch.nn.Module, residuals: int, has_y: bool) -> None:
        super().__init__()
        self._modules = unet._modules
        self._parameters = unet._parameters
        self._buffers = unet._buffers
        object.__setattr__(self, "_unet", unet)  # not a submodule: its weights are already ours, unprefixed
        self.residuals = residuals
        self.has_y = has_y
        self.ldm = hasattr(unet, "input_blocks")
        if not self.ldm and not hasattr(unet, "down_blocks"):
            raise ExportError(f"a {type(unet).__name__} has neither ldm nor diffusers blocks: no ControlNet export")

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                *rest: torch.Tensor) -> torch.Tensor:
        y = rest[0] if self.has_y else None
        control = list(rest[1:] if self.has_y else rest)
        if len(control) != self.residuals:
            raise ExportError(f"expected {self.residuals} ControlNet residuals, got {len(control)}")
        if self.ldm:
            return self._ldm_forward(x, timesteps, context, y, control)
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.forward(
            self._unet, x, timesteps, context, class_labels=y, return_dict=False,
            down_block_additional_residuals=tuple(control[:-1]), mid_block_additional_residual=control[-1])[0]

    def _ldm_forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                     y: torch.Tensor | None, control: list[torch.Tensor]) -> torch.Tensor:
        """ldm/sgm ``UNetModel.forward`` with ControlNet's additions (hook.py ~805-832)."""
        unet = self._unet
        t_emb = ldm_timestep_embedding(unet)(timesteps, unet.model_channels, repeat_only=False)
        emb = unet.time_embed(t_emb.to(x.dtype))
        if y is not None:
            emb = emb + unet.label_emb(y)
        h, skips = x, []
        for block in unet.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = unet.middle_block(h, emb, context) + control.pop()
        for block in unet.output_blocks:
            h = block(torch.cat([h, skips.pop() + control.pop()], dim=1), emb, context)
        return unet.out(h.type(x.dtype))


def ldm_timestep_embedding(unet: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """The ``timestep_embedding`` of the module that defines ``unet``'s class (ldm's or sgm's openaimodel, which
    import it from their ``diffusionmodules.util``); subclasses made by patches are looked through."""
    for cls in type(unet).__mro__:
        found = getattr(sys.modules.get(cls.__module__), "timestep_embedding", None)
        if found is not None:
            return found
    raise ExportError(f"no timestep_embedding beside {type(unet).__name__}: not an ldm/sgm UNetModel")
