"""ControlNet jobs on ControlNet-ready engines, through the WebUI's ControlNet extension (sd-webui-controlnet).

How ControlNet reaches the UNet (v1.1.455 scripts/hook.py): ``UnetHook.hook`` (~449) replaces the UNet
instance's ``forward`` with its own (~990), which per call computes every unit's residuals in PyTorch (weights,
guidance start/end, soft injection, cfg injection, masks, several units summed into
``total_controlnet_embedding``) and then runs the UNet's loop itself, using the UNet's submodules
(``time_embed``, ``label_emb``, ``input_blocks``, ``middle_block``, ``output_blocks``, ``out``; ~796-835).

The seam used here: ``UnetHook.hook`` is wrapped so that the forward ControlNet installs is itself wrapped by
:class:`EngineForward`. With a ControlNet-ready engine active, ControlNet's own forward runs unchanged, every
line of its per-step logic included, but bound to an :class:`_EngineFacade` instead of the UNet: the facade's
blocks hand back zero tensors of each block's size, so what ControlNet adds to them (``aligned_adding``) is
exactly its residual, which the facade reads off the output blocks' inputs; its ``out`` runs the engine with
ControlNet's ``x``, ``context``, ``y`` and those residuals. The PyTorch UNet stays where the WebUI put it.
Without an engine (None, fallback) ControlNet's forward runs on the UNet as always.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from modules import extensions, processing, script_loading, sd_unet

from trt_lib.engines.matching import no_controlnet_engine
from trt_lib.errors import NoProfileError, TrtError
from trt_lib.model.families import ResidualPoint

from .provider import TrtUnet, for_api

SUPPORTED_VERSIONS = ("v1.1.455",)
FOLDER_NAME = "sd-webui-controlnet"
ENGINE_TYPES = ("ControlNet", "ControlLoRA", "ControlNetUnion")
"""ControlModelType names whose work is residuals at the skip connections only (enums.py ``is_controlnet``,
InstantID excepted: it needs its IP-Adapter unit)."""
WHY = {
    "AttentionInjection": "reads and writes attention and group-norm banks inside the UNet",
    "IPAdapter": "changes attention inside the UNet",
    "InstantID": "needs an IP-Adapter unit, which changes attention inside the UNet",
    "Controlllite": "patches the UNet's attention layers",
    "SparseCtrl": "is AnimateDiff's sparse control, which works inside the UNet",
    "T2I_Adapter": "adds its residuals inside the UNet's encoder, which engines do not take",
    "T2I_StyleAdapter": "adds rows to the prompt context inside the UNet call",
    "ReVision": "changes the UNet's y input inside the UNet call",
}
POST_PROCESSING = ("colorfix", "inpaint_only")
"""Preprocessors whose unit rewrites the UNet's output with the VAE inside the UNet call (hook.py ~838-891)."""


class ControlNetUnitError(TrtError):
    status_code = 409


def find_extension() -> tuple[str, Any] | None:
    """(version, ControlNet's loaded ``controlnet.py`` module) of the active ControlNet extension, or None.

    Found by folder name among active extensions (folders such as ``sd-webui-controlnet-main`` exist), then
    taken from the WebUI's loaded scripts: the module ControlNet itself runs, so its ``UnetHook`` is the class
    that hooks jobs (importing the files again would make a second, unused copy).
    """
    for ext in extensions.active():
        if FOLDER_NAME not in ext.name.lower():
            continue
        module = script_loading.loaded_scripts.get(os.path.join(ext.path, "scripts", "controlnet.py"))
        if module is not None:
            version = getattr(getattr(module, "controlnet_version", None), "version_flag", "unknown")
            return version, module
    return None


def install() -> str | None:
    """Wrap ControlNet's ``UnetHook.hook`` once (before its ``process`` hooks a job); a message when the
    installed ControlNet's version is one this bridge was not made for (its jobs then stay on PyTorch)."""
    found = find_extension()
    if found is None:
        return None
    version, module = found
    if version not in SUPPORTED_VERSIONS:
        return (f"ControlNet {version} is not a version TensorRT engines know ({', '.join(SUPPORTED_VERSIONS)}); "
                "its jobs run on the PyTorch UNet")
    hook_class = module.UnetHook
    if not getattr(hook_class.hook, "trt_wrapped", False):
        hook_class.hook = _wrapped(hook_class.hook)
    return None


def _wrapped(original: Callable[..., Any]) -> Callable[..., Any]:
    def hook(self: Any, model: torch.nn.Module, sd_ldm: Any, control_params: list, process: Any,
             *args: Any, **kwargs: Any) -> Any:
        result = original(self, model, sd_ldm, control_params, process, *args, **kwargs)
        model.forward = EngineForward(model.forward, model, control_params)
        return result

    hook.trt_wrapped = True  # type: ignore[attr-defined]
    return hook


def unsupported(control_params: Sequence[Any]) -> list[str]:
    """Why each unit of a job cannot reach an engine, one sentence per unit; empty when all can."""
    found = []
    for i, param in enumerate(control_params):
        kind = param.control_model_type.name
        name = (getattr(param, "preprocessor", None) or {}).get("name", "none")
        post = next((p for p in POST_PROCESSING if p in name), None)
        if kind not in ENGINE_TYPES:
            why = WHY.get(kind, "is a control type TensorRT engines do not know")
        elif post:
            why = f"post-processes the UNet's output ({post}) inside the UNet call"
        else:
            continue
        found.append(f"ControlNet unit {i + 1} ({name}, {kind}) {why}")
    return found


def unit_error(problems: list[str]) -> ControlNetUnitError:
    return ControlNetUnitError(
        "; ".join(problems) + ", and cannot run on a TensorRT engine. Choose None for SD Unet for this job, "
        "or set the TensorRT fallback setting to run such jobs on the PyTorch UNet.")


class EngineForward:
    """The UNet instance's forward during a ControlNet job: ControlNet's own, on the engine when one is active."""

    def __init__(self, controlnet_forward: Any, model: torch.nn.Module, control_params: list) -> None:
        self.controlnet_forward = controlnet_forward
        self.model = model
        self.control_params = control_params
        self.pending: Exception | None = None
        """Set by the job check: raised at the job's first UNet call, before any work (never in another job)."""
        self._zeros: dict[tuple, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor | None = None, context: torch.Tensor | None = None,
                 y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if self.pending is not None:
            error, self.pending = self.pending, None
            _refuse(error)
        unet = sd_unet.current_unet
        if not isinstance(unet, TrtUnet) or unet.session is None:
            return self.controlnet_forward(x, timesteps, context, y, **kwargs)
        points = next((e.residual_points for e in unet.session.entries if e.controlnet), ())
        if not points:
            _refuse(NoProfileError(no_controlnet_engine(unet.option.checkpoint)))
        facade = _EngineFacade(self.model, points, self._zero,
                               lambda xx, ctx, yy, res: unet.forward(xx, timesteps, ctx, y=yy, control=res))
        return self.controlnet_forward.__func__(facade, x, timesteps, context, y, **kwargs)

    def _zero(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """One cached zero tensor per block size (ControlNet adds its residuals to it out of place)."""
        key = (shape, like.dtype, like.device)
        zero = self._zeros.get(key)
        if zero is None:
            zero = self._zeros[key] = torch.zeros(shape, dtype=like.dtype, device=like.device)
        return zero


def _refuse(error: Exception) -> None:
    """Stop the job before ControlNet's forward runs, clearing the WebUI's prompt-conditioning caches as that
    forward would have (hook.py ``unmark_prompt_context``, 109-110): ControlNet marks the cached conds of its
    jobs with an extra first row (``process_sample``, 466-469), and left marked, the next job with the same
    prompt would get a context of 77k + 1 rows (no engine takes it; PyTorch would attend to the mark)."""
    processing.StableDiffusionProcessing.cached_c = [None, None]
    processing.StableDiffusionProcessing.cached_uc = [None, None]
    raise for_api(error) if isinstance(error, TrtError) else error


class _EngineFacade:
    """What ControlNet's forward sees as ``self`` while an engine runs the UNet (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, points: Sequence[ResidualPoint],
                 zero: Callable[[tuple[int, ...], torch.Tensor], torch.Tensor],
                 run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, list], torch.Tensor]) -> None:
        self.model_channels = model.model_channels
        self._points, self._zero, self._run = list(points), zero, run
        self._x: torch.Tensor | None = None
        self._context: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._residuals: list[torch.Tensor | None] = [None] * len(points)
        self.input_blocks = [self._input_block(i) for i in range(len(points) - 1)]
        self.output_blocks = [self._output_block(j) for j in range(len(points) - 1)]

    def _block_zero(self, point: ResidualPoint, channels: int | None = None) -> torch.Tensor:
        assert self._x is not None
        rows, _, height, width = self._x.shape
        shape = (rows, point.channels if channels is None else channels, height // point.downscale,
                 width // point.downscale)
        return self._zero(shape, self._x)

    def time_embed(self, t_emb: torch.Tensor) -> torch.Tensor:
        return t_emb.new_zeros(())  # ControlNet only hands ``emb`` back to these blocks

    def label_emb(self, y: torch.Tensor) -> torch.Tensor:
        self._y = y
        return y.new_zeros(())

    def _input_block(self, i: int) -> Callable[..., torch.Tensor]:
        def block(h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            if i == 0:
                self._x, self._context = h, context
            return self._block_zero(self._points[i])

        return block

    def middle_block(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self._block_zero(self._points[-1])

    def _output_block(self, j: int) -> Callable[..., torch.Tensor]:
        def block(h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            k = len(self._points) - 2 - j  # the skip this block pops: input block k's, plus residual k
            skip = self._points[k].channels
            self._residuals[k] = h[:, h.shape[1] - skip:]
            if j == 0:
                self._residuals[-1] = h[:, :h.shape[1] - skip]  # the middle block's output plus the last residual
            return self._block_zero(self._points[max(k - 1, 0)], channels=0)  # concatenates to the next skip

        return block

    def out(self, h: torch.Tensor) -> torch.Tensor:
        assert self._x is not None and self._context is not None
        return self._run(self._x, self._context, self._y, self._residuals)
