"""The sd_unet provider: one "[TRT] <checkpoint>" option per checkpoint that has engines.

The WebUI compares options by identity and calls ``create_unet()``/``activate()`` after it has already
moved the PyTorch UNet away, so options are cached and neither method ever raises: a problem found there
is kept and raised, clearly, by the first ``forward``.

Most jobs are checked whole before sampling (``job_check``). Jobs that other extensions run inside a job
(ADetailer's inpainting passes) skip the always-on script, so ``forward`` also follows the job's LoRAs and,
for a call no engine covers, raises the clear error or runs the PyTorch UNet, as the settings say.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import torch
from fastapi.exceptions import HTTPException
from modules import devices, sd_unet, shared

from trt_lib.engines.lora_refit import LoraKey, UncoveredLoraError
from trt_lib.engines.unet_session import UnetSession
from trt_lib.errors import NoProfileError, TrtError

from . import loaded_model, prompt_loras, settings

LABEL_PREFIX = "[TRT] "


class CheckpointMismatchError(TrtError):
    status_code = 409


class Rejection(HTTPException):
    """Mixed into an expected rejection (HTTP 4xx) raised out of a generation. The WebUI's API prints a
    traceback for every exception but an ``HTTPException`` (modules/api/api.py ``handle_exception``, v1.10.1
    lines 174-180), ~180 lines for a job that was merely refused; so the rejection is one, and
    :func:`for_api` prints the one line instead. Its text stays the message (no "422: …")."""

    __str__ = Exception.__str__
    __repr__ = Exception.__repr__


@functools.cache
def _rejection_class(cls: type[TrtError]) -> type[TrtError]:
    """``cls`` and :class:`Rejection`, under ``cls``'s name (the API answers ``"error": type(e).__name__``)."""
    return type(cls.__name__, (cls, Rejection), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})


def for_api(error: TrtError) -> TrtError:
    """The error to raise out of a generation. The WebUI's API middleware answers with ``status_code`` and
    ``detail`` read from the exception's instance ``vars`` (class attributes would give HTTP 500 with an
    empty detail); an expected rejection (4xx) becomes a :class:`Rejection` and is printed here as one line."""
    status = error.status_code
    if status < 500 and not isinstance(error, Rejection):
        rejection = _rejection_class(type(error)).__new__(_rejection_class(type(error)))
        rejection.args, rejection.__dict__ = error.args, {**vars(error), "headers": None}
        error = rejection
        print(f"[TensorRT] generation stopped (HTTP {status}): {error}", file=sys.stderr)
    error.status_code = status
    error.detail = str(error)
    return error


def checkpoint_mismatch(option: TrtUnetOption, loaded: str | None) -> CheckpointMismatchError:
    """The error for an option whose engines belong to another checkpoint than the loaded one."""
    return CheckpointMismatchError(
        f"{option.label} holds engines for {option.checkpoint}, but {loaded} is loaded. Choose 'Automatic' for "
        "SD Unet, or build engines for this checkpoint in the TensorRT tab.")


class TrtUnetOption(sd_unet.SdUnetOption):
    """Dropdown entry for the engines of one checkpoint with one set of baked LoRAs (none for most)."""

    def __init__(self, checkpoint: str, lora_label: str, open_session: Callable[[str, str], UnetSession],
                 prefix: str = LABEL_PREFIX) -> None:
        self.checkpoint = checkpoint
        self.model_name = None if lora_label else checkpoint
        """What "Automatic" matches: never an option with baked LoRAs, which is chosen by its label."""
        self.lora_label = lora_label
        self.label = prefix + checkpoint + (f" [LoRA {lora_label}]" if lora_label else "")
        """``[TRT] …``, or ``[ORT] …`` while the reference runtime runs engines (never claiming TensorRT)."""
        self._open_session = open_session

    def create_unet(self) -> TrtUnet:
        return TrtUnet(self)


class TrtUnet(sd_unet.SdUnet):
    """Runs the checkpoint's engines in place of its PyTorch UNet."""

    def __init__(self, option: TrtUnetOption) -> None:
        super().__init__()
        self.option = option
        self.session: UnetSession | None = None
        self.error: Exception | None = None
        self.pending: Exception | None = None
        """Set by the job check to stop this job at its first UNet call, before any work is done."""
        self._loras: LoraKey = ()
        """The LoRA set the engines were last brought to from ``forward``."""
        self._said: set[str] = set()
        self._unet_moved = False
        """True while the PyTorch UNet sits on the GPU for a fallback call; it goes back on the next engine call."""

    def activate(self) -> None:
        try:
            self.session = self.option._open_session(self.option.checkpoint, self.option.lora_label)
        except Exception as e:  # never raise here: the WebUI would be left without a UNet
            self.error = e
            print(f"[TensorRT] {self.option.label} cannot be used: {e}")

    def load_error(self) -> TrtError:
        """Why ``activate`` could not load the engines, as the error to raise."""
        if isinstance(self.error, TrtError):
            return self.error
        return TrtError(f"{self.option.label} could not be loaded: {self.error}")

    def deactivate(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        self._unet_moved = False  # apply_unet puts the PyTorch UNet where the next option needs it
        devices.torch_gc()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, *args,
                control: list | None = None, **kwargs) -> torch.Tensor:
        """One UNet call; ``control``: ControlNet's residuals, from :mod:`.controlnet` (then no PyTorch fallback:
        the call is already inside ControlNet's forward)."""
        if self.pending is not None:
            error, self.pending = self.pending, None
            raise for_api(error)
        if self.session is None:
            raise for_api(self.load_error())
        if loaded_model.checkpoint_name() != self.option.checkpoint:
            return self._other_checkpoint(x, timesteps, context, *args, **kwargs)
        try:
            if self._loras or prompt_loras.loaded_networks():  # no work per call while no LoRA is in play
                self._follow_loras()
            out = self.session(x, timesteps, context, kwargs.get("y"), control=control)
        except (NoProfileError, UncoveredLoraError) as e:  # a job the check before sampling did not see
            if control is not None or not settings.falls_back():
                raise for_api(e) from None
            self._say(f"using the PyTorch UNet for a call no engine takes: {e}")
            return self._pytorch(x, timesteps, context, *args, **kwargs)
        except TrtError as e:
            raise for_api(e) from None
        if self._unet_moved:
            self._put_unet_away()
        return out

    def _follow_loras(self) -> None:
        key = prompt_loras.wanted()
        if key != self._loras:
            prompt_loras.sync(self.session)
            self._loras = key

    def _other_checkpoint(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, *args,
                          **kwargs) -> torch.Tensor:
        """The refiner (or a hires checkpoint) was loaded mid-job while this engine stays selected: run that
        checkpoint's own PyTorch UNet, brought to the GPU (a load into the same model re-applies sd_unet, which
        moves the new UNet to the CPU), instead of engines built for another model."""
        self._say(f"{loaded_model.checkpoint_name()} has no engine here; running its PyTorch UNet")
        return self._pytorch(x, timesteps, context, *args, **kwargs)

    def _pytorch(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, *args,
                 **kwargs) -> torch.Tensor:
        """One call on the loaded PyTorch UNet, brought to the GPU if ``apply_unet`` had moved it away."""
        unet = shared.sd_model.model.diffusion_model
        if not shared.sd_model.lowvram and next(unet.parameters()).device != x.device:
            unet.to(x.device)
            self._unet_moved = True
        sd_unet.current_unet = None  # the patched UNet forward would call back into this object otherwise
        try:
            return unet(x, timesteps, context, *args, **kwargs)
        finally:
            sd_unet.current_unet = self

    def _put_unet_away(self) -> None:
        shared.sd_model.model.diffusion_model.to(devices.cpu)
        self._unet_moved = False
        devices.torch_gc()

    def _say(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            print(f"[TensorRT] {message}")


class OptionCache:
    """Keeps one option object per (checkpoint, baked LoRAs, label prefix) so that refreshing the list never
    reloads an active engine."""

    def __init__(self, open_session: Callable[[str, str], UnetSession]) -> None:
        self._open_session = open_session
        self._options: dict[tuple[str, str, str], TrtUnetOption] = {}

    def options(self, groups: list[tuple[str, str]], prefix: str = LABEL_PREFIX,
                automatic: set[tuple[str, str]] | None = None) -> list[TrtUnetOption]:
        """The options of ``groups`` under ``prefix``; only those in ``automatic`` (all by default) can be picked
        by "Automatic"."""
        for checkpoint, lora_label in groups:
            key = (checkpoint, lora_label, prefix)
            if key not in self._options:
                self._options[key] = TrtUnetOption(checkpoint, lora_label, self._open_session, prefix)
            option = self._options[key]
            option.model_name = None if lora_label or (automatic is not None and (checkpoint, lora_label)
                                                       not in automatic) else checkpoint
        return [self._options[(c, lo, prefix)] for c, lo in groups]
