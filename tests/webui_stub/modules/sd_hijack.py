"""Mirrors modules/sd_hijack.py where the extension meets it: the UNet class's ``forward`` is patched with
``sd_unet.create_unet_forward`` so that an active SdUnet receives every UNet call, and ``model_hijack``
counts prompt tokens.

The WebUI patches ldm's and sgm's ``UNetModel`` classes at import; the stand-in's checkpoints are other
UNet classes, so :func:`patch_unet` gives each loaded UNet a patched subclass of its own class instead.
"""

from __future__ import annotations

from typing import Any

import torch

from modules import sd_unet

_patched: dict[type, type] = {}


def patch_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """Route ``unet``'s forward through ``sd_unet`` (done once per UNet class, like the WebUI's patch)."""
    base = type(unet)
    if base in _patched.values():
        return unet
    if base not in _patched:
        _patched[base] = type(base.__name__, (base,), {"forward": sd_unet.create_unet_forward(base.forward),
                                                       "original_forward": base.forward})
    unet.__class__ = _patched[base]
    return unet


class StableDiffusionModelHijack:
    def __init__(self) -> None:
        self.comments: list[str] = []
        self.extra_generation_params: dict[str, Any] = {}
        self.optimization_method: str | None = None
        self.optimization_calls: list[str | None] = []
        """What ``apply_optimizations`` was asked for, in order (for tests)."""

    def apply_optimizations(self, option: str | None = None) -> None:
        """The WebUI applies ``option`` or, with none, the user's cross-attention setting; "None" means plain
        attention. The stand-in's UNets have one attention, so only the choice is recorded."""
        from modules import shared

        self.optimization_calls.append(option)
        selection = option or shared.opts.cross_attention_optimization
        self.optimization_method = "" if selection == "None" else selection

    def hijack(self, m: Any) -> None:
        patch_unet(m.model.diffusion_model)

    def undo_hijack(self, m: Any) -> None:
        """The WebUI leaves the UNet class patched too; only embeddings and optimisations are undone."""

    def apply_circular(self, enable: bool) -> None:
        pass

    def clear_comments(self) -> None:
        self.comments = []
        self.extra_generation_params = {}

    def get_prompt_lengths(self, text: str) -> tuple[int, int]:
        from modules import shared

        return shared.sd_model.cond_stage_model.prompt_lengths(text)


model_hijack = StableDiffusionModelHijack()
