"""Mirrors modules/sd_samplers_common.py ``apply_refiner`` (lines 158-202): at the first step whose share of
the job reaches ``refiner_switch_at``, the refiner checkpoint is loaded (``reload_model_weights`` under
``SkipWritingToConfig``: in place for one of the same config, which re-applies sd_unet, else as a new model),
the conds are made again and the sampler's model wrapper is rebuilt. The switch by sigma (the default
without ``refiner_switch_by_sample_steps``) is left out: the stand-in switches by sampling steps."""

from __future__ import annotations

from typing import Any

from modules import devices, sd_models, shared


def apply_refiner(cfg_denoiser: Any, sigma: Any = None) -> bool:
    completed_ratio = cfg_denoiser.step / cfg_denoiser.total_steps
    cfg_denoiser.p.extra_generation_params["Refiner switch by sampling steps"] = True
    refiner_switch_at = cfg_denoiser.p.refiner_switch_at
    refiner_checkpoint_info = cfg_denoiser.p.refiner_checkpoint_info
    if refiner_switch_at is not None and completed_ratio < refiner_switch_at:
        return False
    if refiner_checkpoint_info is None or shared.sd_model.sd_checkpoint_info == refiner_checkpoint_info:
        return False
    cfg_denoiser.p.extra_generation_params["Refiner"] = refiner_checkpoint_info.short_title
    cfg_denoiser.p.extra_generation_params["Refiner switch at"] = refiner_switch_at
    with sd_models.SkipWritingToConfig():
        sd_models.reload_model_weights(info=refiner_checkpoint_info)
    devices.torch_gc()
    cfg_denoiser.p.setup_conds()
    cfg_denoiser.update_inner_model()
    return True
