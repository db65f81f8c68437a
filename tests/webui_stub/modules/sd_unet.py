"""Mirrors modules/sd_unet.py exactly: options collected from callbacks, "Automatic"/"None"/label choice,
identity comparison with the current option, moving the PyTorch UNet off the device while an SdUnet is
active, and the patched UNet forward that routes to ``current_unet``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from modules import devices, script_callbacks, shared

unet_options: list[SdUnetOption] = []
current_unet_option: SdUnetOption | None = None
current_unet: SdUnet | None = None
original_forward = None  # not used, only left temporarily for compatibility (as in v1.10.1)


def list_unets() -> None:
    new_unets = script_callbacks.list_unets_callback()
    unet_options.clear()
    unet_options.extend(new_unets)


def get_unet_option(option: str | None = None) -> SdUnetOption | None:
    option = option or shared.opts.sd_unet
    if option == "None":
        return None
    if option == "Automatic":
        name = shared.sd_model.sd_checkpoint_info.model_name
        options = [x for x in unet_options if x.model_name == name]
        option = options[0].label if options else "None"
    return next(iter([x for x in unet_options if x.label == option]), None)


def apply_unet(option: str | None = None) -> None:
    global current_unet_option
    global current_unet

    new_option = get_unet_option(option)
    if new_option == current_unet_option:
        return

    if current_unet is not None:
        print(f"Dectivating unet: {current_unet.option.label}")
        current_unet.deactivate()

    current_unet_option = new_option
    if current_unet_option is None:
        current_unet = None
        if not shared.sd_model.lowvram:
            shared.sd_model.model.diffusion_model.to(devices.device)
        return

    shared.sd_model.model.diffusion_model.to(devices.cpu)
    devices.torch_gc()

    current_unet = current_unet_option.create_unet()
    current_unet.option = current_unet_option
    print(f"Activating unet: {current_unet.option.label}")
    current_unet.activate()


class SdUnetOption:
    model_name: str | None = None
    """name of related checkpoint - this option will be selected automatically for unet if the name of
    checkpoint matches this"""

    label: str | None = None
    """name of the unet in UI"""

    def create_unet(self) -> SdUnet:
        """returns SdUnet object to be used as a Unet instead of built-in unet when making pictures"""
        raise NotImplementedError()


class SdUnet(torch.nn.Module):
    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, *args: Any,
                **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError()

    def activate(self) -> None:
        pass

    def deactivate(self) -> None:
        pass


def create_unet_forward(original_forward: Callable) -> Callable:
    def UNetModel_forward(self, x, timesteps=None, context=None, *args, **kwargs):  # noqa: N802, ANN001, ANN202
        if current_unet is not None:
            return current_unet.forward(x, timesteps, context, *args, **kwargs)
        return original_forward(self, x, timesteps, context, *args, **kwargs)

    return UNetModel_forward
