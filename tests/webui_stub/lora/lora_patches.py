"""Mirrors extensions-builtin/Lora/lora_patches.py (v1.10.1, lines 7-33): at import of the extension the
class ``forward`` and ``_load_from_state_dict`` of torch.nn.Linear, Conv2d, GroupNorm, LayerNorm and
MultiheadAttention are replaced (through ``modules.patches``, key ``lora_patches``) by ``networks``'
``network_<Class>_forward`` / ``network_<Class>_load_state_dict``; the originals are kept as attributes
(``Linear_forward``, ...) and on ``networks.originals``; ``undo`` puts them back."""

from __future__ import annotations

import networks
import torch
from modules import patches

PATCHED = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.MultiheadAttention)
_FIELDS = (("forward", "forward"), ("load_state_dict", "_load_from_state_dict"))


class LoraPatches:
    def __init__(self) -> None:
        for cls in PATCHED:
            for suffix, field in _FIELDS:
                replacement = getattr(networks, f"network_{cls.__name__}_{suffix}")
                setattr(self, f"{cls.__name__}_{suffix}", patches.patch(__name__, cls, field, replacement))

    def undo(self) -> None:
        for cls in PATCHED:
            for suffix, field in _FIELDS:
                setattr(self, f"{cls.__name__}_{suffix}", patches.undo(__name__, cls, field))
