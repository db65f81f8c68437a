"""Mirrors extensions-builtin/Lora/network.py: a LoRA file on disk, a loaded network, and the module base
class with ``finalize_updown`` (bias, reshape, alpha/dim scale, multiplier). DoRA, the sd3 ``QkvLinear``
and MultiheadAttention paths are left out (the tiny test UNets have none)."""

from __future__ import annotations

import os
from collections import namedtuple
from typing import Any

import torch

NetworkWeights = namedtuple("NetworkWeights", ["network_key", "sd_key", "w", "sd_module"])


class NetworkOnDisk:
    def __init__(self, name: str, filename: str) -> None:
        self.name = name
        self.filename = filename
        self.metadata: dict[str, str] = {}
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        self.alias = self.metadata.get("ss_output_name", self.name)
        self.hash = ""
        self.shorthash = ""

    def read_hash(self) -> None:
        """The WebUI hashes the file here (for infotext); the stand-in does not need it."""

    def get_alias(self) -> str:
        return self.name


class Network:  # LoraModule
    def __init__(self, name: str, network_on_disk: NetworkOnDisk) -> None:
        self.name = name
        self.network_on_disk = network_on_disk
        self.te_multiplier = 1.0
        self.unet_multiplier = 1.0
        self.dyn_dim: int | None = None
        self.modules: dict[str, NetworkModule] = {}
        self.bundle_embeddings: dict[str, Any] = {}
        self.mtime: float | None = None
        self.mentioned_name: str | None = None


class ModuleType:
    def create_module(self, net: Network, weights: NetworkWeights) -> NetworkModule | None:
        return None


class NetworkModule:
    def __init__(self, net: Network, weights: NetworkWeights) -> None:
        self.network = net
        self.network_key = weights.network_key
        self.sd_key = weights.sd_key
        self.sd_module = weights.sd_module
        self.shape = self.sd_module.weight.shape if hasattr(self.sd_module, "weight") else None
        self.ops: Any = None
        self.extra_kwargs: dict[str, Any] = {}
        if isinstance(self.sd_module, torch.nn.Conv2d):
            self.ops = torch.nn.functional.conv2d
            self.extra_kwargs = {"stride": self.sd_module.stride, "padding": self.sd_module.padding}
        elif isinstance(self.sd_module, torch.nn.Linear):
            self.ops = torch.nn.functional.linear
        elif isinstance(self.sd_module, torch.nn.LayerNorm):
            self.ops = torch.nn.functional.layer_norm
            self.extra_kwargs = {"normalized_shape": self.sd_module.normalized_shape, "eps": self.sd_module.eps}
        elif isinstance(self.sd_module, torch.nn.GroupNorm):
            self.ops = torch.nn.functional.group_norm
            self.extra_kwargs = {"num_groups": self.sd_module.num_groups, "eps": self.sd_module.eps}
        self.dim: int | None = None
        self.bias = weights.w.get("bias")
        self.alpha = weights.w["alpha"].item() if "alpha" in weights.w else None
        self.scale = weights.w["scale"].item() if "scale" in weights.w else None

    def multiplier(self) -> float:
        if "transformer" in self.sd_key[:20]:
            return self.network.te_multiplier
        return self.network.unet_multiplier

    def calc_scale(self) -> float:
        if self.scale is not None:
            return self.scale
        if self.dim is not None and self.alpha is not None:
            return self.alpha / self.dim
        return 1.0

    def finalize_updown(self, updown: torch.Tensor, orig_weight: torch.Tensor, output_shape: list[int],
                        ex_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.bias is not None:
            updown = updown.reshape(self.bias.shape)
            updown += self.bias.to(orig_weight.device, dtype=updown.dtype)
            updown = updown.reshape(output_shape)
        if len(output_shape) == 4:
            updown = updown.reshape(output_shape)
        if orig_weight.size().numel() == updown.size().numel():
            updown = updown.reshape(orig_weight.shape)
        if ex_bias is not None:
            ex_bias = ex_bias * self.multiplier()
        updown = updown * self.calc_scale()
        return updown * self.multiplier(), ex_bias

    def calc_updown(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """network.py lines 221-227: the functional mode's addition to the layer's output."""
        if self.ops is None:
            raise NotImplementedError()
        updown, ex_bias = self.calc_updown(self.sd_module.weight)
        return y + self.ops(x, weight=updown, bias=ex_bias, **self.extra_kwargs)
