"""Mirrors extensions-builtin/Lora/scripts/lora_script.py and lora_patches.py: registers the ``lora`` extra
network, names the layers on model load, and patches the layer forwards so that each layer merges the loaded
networks before it runs (``network_apply_weights``). ``install`` returns the undo."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import extra_networks_lora
import networks
import torch
from modules import extra_networks, script_callbacks, shared

PATCHED = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)


def _patched_forward(original: Callable) -> Callable:
    def forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        networks.network_apply_weights(self)
        return original(self, *args, **kwargs)

    return forward


def install() -> Callable[[], None]:
    originals = {cls: cls.forward for cls in PATCHED}
    for cls, original in originals.items():
        cls.forward = _patched_forward(original)
    extra_networks.register_extra_network(extra_networks_lora.ExtraNetworkLora())
    script_callbacks.on_model_loaded(networks.assign_network_names_to_compvis_modules)
    if shared.sd_model is not None:
        networks.assign_network_names_to_compvis_modules(shared.sd_model)

    def undo() -> None:
        for cls, original in originals.items():
            cls.forward = original
        extra_networks.extra_network_registry.pop("lora", None)

    return undo
