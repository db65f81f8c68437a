"""Mirrors modules/devices.py: the device and dtypes the WebUI runs the UNet with (CPU, fp32 here)."""

import contextlib

import torch

cpu = torch.device("cpu")
device = cpu
device_interrogate = cpu
device_gfpgan = cpu
device_esrgan = cpu
dtype = torch.float32
dtype_vae = torch.float32
dtype_unet = torch.float32
unet_needs_upcast = False
fp8 = False



def cond_cast_unet(input: torch.Tensor) -> torch.Tensor:
    return input.to(dtype_unet) if unet_needs_upcast else input


gc_calls = 0
"""The stand-in's addition: how often ``torch_gc`` ran."""


def torch_gc() -> None:
    global gc_calls
    gc_calls += 1
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def autocast(disable: bool = False) -> contextlib.AbstractContextManager:
    """The WebUI returns a null context when the dtype is fp32, as it always is on this stand-in."""
    return contextlib.nullcontext()


def without_autocast(disable: bool = False) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def test_for_nans(x: torch.Tensor, where: str) -> None:
    if torch.all(torch.isnan(x)).item():
        raise NansException(f"A tensor with all NaNs was produced in {where}.")


class NansException(Exception):
    pass
