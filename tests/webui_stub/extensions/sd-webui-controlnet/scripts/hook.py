"""Mirrors the parts of sd-webui-controlnet v1.1.455 scripts/hook.py that ControlNet units of the residual kind
use; line numbers are that file's.

Kept: ``ControlParams`` (150-243: the fields, ``disabled_by_hr_option``, ``apply_effective_region_mask``),
``aligned_adding`` (245-265), ``UnetHook.guidance_schedule_handler`` (439-447), and ``UnetHook.hook`` (449-1065):
it installs ``forward_webui`` bound to the UNet as the instance's forward (897-910, 988-992), and ``forward``
(472-835) picks the low-res or hires hint per call (520-541), runs each ControlNet unit not stopped by its
guidance range with the inpainting-UNet workaround (576-602), scales by weight, soft injection or advanced
weighting (624-664), applies the effective region mask (666-670), sums the units (672-688) and runs the U-Net
loop with the additions (796-835); ``restore`` (1067-1074).

Differences, each because of the stand-in WebUI or the tiny models: the residual count is the UNet's own
(``len(input_blocks) + 1``; the real 13/10 at 475-478 and the 13 soft-injection scales at 653 are the released
UNets' count); the stub has no ``cfg_denoiser`` callback, so the guidance schedule is applied from
``shared.state`` at each UNet call (the values the real callback carries); cond/uncond marks (cfg injection,
global average pooling), Revision, T2I adapters, attention/AdaIN banks and colorfix/inpaint_only
post-processing are not reproduced (the TensorRT job check refuses those units before they would run); nor
are ``process_sample``'s marks on the conds (466-469: an extra first row of +-1024 in the cached conds) and
``unmark_prompt_context`` (81-112), which drops that row per call and clears the WebUI's cond caches
(``StableDiffusionProcessing.cached_c``/``cached_uc``, 109-110); the stand-in's conds are never cached.
"""

import sys
from types import SimpleNamespace

import torch
from modules import shared
from scripts.enums import ControlModelType


class ControlParams:
    def __init__(self, control_model, preprocessor, hint_cond, weight=1.0, guidance_stopped=False,
                 start_guidance_percent=0.0, stop_guidance_percent=1.0, advanced_weighting=None,
                 control_model_type=ControlModelType.ControlNet, hr_hint_cond=None, global_average_pooling=False,
                 soft_injection=False, cfg_injection=False, effective_region_mask=None):
        self.control_model = control_model
        self.preprocessor = preprocessor
        self.hint_cond = hint_cond
        self.weight = weight
        self.guidance_stopped = guidance_stopped
        self.start_guidance_percent = start_guidance_percent
        self.stop_guidance_percent = stop_guidance_percent
        self.advanced_weighting = advanced_weighting
        self.control_model_type = control_model_type
        self.global_average_pooling = global_average_pooling
        self.hr_hint_cond = hr_hint_cond
        self.effective_region_mask = effective_region_mask
        self.used_hint_cond = None
        self.soft_injection = soft_injection
        self.cfg_injection = cfg_injection

    def disabled_by_hr_option(self, is_in_high_res_fix):
        return False  # HiResFixOption.BOTH, the default

    def apply_effective_region_mask(self, out):
        if self.effective_region_mask is None:
            return out
        mask = torch.nn.functional.interpolate(self.effective_region_mask.to(out.device), size=out.shape[-2:],
                                               mode="bilinear")
        return out * mask


def aligned_adding(base, x, require_channel_alignment):
    if isinstance(x, float):
        if x == 0.0:
            return base
        return base + x
    if require_channel_alignment:
        zeros = torch.zeros_like(base)
        zeros[:, :x.shape[1], ...] = x
        x = zeros
    base_h, base_w = base.shape[-2:]
    xh, xw = x.shape[-2:]
    if (xh > 1 or xw > 1) and (base_h != xh or base_w != xw):
        x = torch.nn.functional.interpolate(x, size=(base_h, base_w), mode="nearest")
    return base + x


class UnetHook(torch.nn.Module):
    def __init__(self, lowvram=False):
        super().__init__()
        self.lowvram = lowvram
        self.model = None
        self.control_params = None
        self.is_in_high_res_fix = False

    def guidance_schedule_handler(self, x):
        for param in self.control_params:
            current_sampling_percent = x.sampling_step / x.total_sampling_steps
            param.guidance_stopped = (current_sampling_percent < param.start_guidance_percent
                                      or current_sampling_percent > param.stop_guidance_percent)

    def hook(self, model, sd_ldm, control_params, process, batch_option_uint_separate=False,
             batch_option_style_align=False):
        self.model = model
        self.sd_ldm = sd_ldm
        self.control_params = control_params
        outer = self

        def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
            outer.guidance_schedule_handler(SimpleNamespace(sampling_step=shared.state.sampling_step,
                                                            total_sampling_steps=shared.state.sampling_steps))
            total_controlnet_embedding = [0.0] * (len(self.input_blocks) + 1)
            require_inpaint_hijack = False
            is_in_high_res_fix = False

            for param in outer.control_params:
                if param.used_hint_cond is None:
                    param.used_hint_cond = param.hint_cond
                if isinstance(param.hr_hint_cond, torch.Tensor) and x.ndim == 4 and param.hint_cond.ndim == 4:
                    _, _, h_lr, w_lr = param.hint_cond.shape
                    _, _, h_hr, w_hr = param.hr_hint_cond.shape
                    _, _, h, w = x.shape
                    h, w = h * 8, w * 8
                    if abs(h - h_lr) < abs(h - h_hr):
                        is_in_high_res_fix = False
                        param.used_hint_cond = param.hint_cond
                    else:
                        is_in_high_res_fix = True
                        param.used_hint_cond = param.hr_hint_cond
            self.is_in_high_res_fix = is_in_high_res_fix
            outer.is_in_high_res_fix = is_in_high_res_fix

            for param in outer.control_params:
                if param.guidance_stopped or param.disabled_by_hr_option(self.is_in_high_res_fix):
                    continue
                if not param.control_model_type.is_controlnet:
                    continue
                x_in = x
                control_model = param.control_model.control_model
                if x.shape[1] != control_model.input_blocks[0][0].in_channels and x.shape[1] == 9:
                    x_in = x[:, :4, ...]
                    require_inpaint_hijack = True
                control = param.control_model(x=x_in, hint=param.used_hint_cond, timesteps=timesteps,
                                              context=context, y=y)
                count = len(total_controlnet_embedding)
                control_scales = [param.weight] * count
                if param.soft_injection:
                    control_scales = [param.weight * (0.825 ** float(count - 1 - i)) for i in range(count)]
                if param.advanced_weighting is not None:
                    control_scales = param.advanced_weighting
                control = [param.apply_effective_region_mask(c * scale) for c, scale in zip(control, control_scales)]
                for idx, item in enumerate(control):
                    total_controlnet_embedding[idx] = item + total_controlnet_embedding[idx]

            hs = []
            with torch.no_grad():
                t_emb = outer.timestep_embedding(timesteps, self.model_channels, repeat_only=False).to(x.dtype)
                emb = self.time_embed(t_emb)
                if y is not None:
                    emb = emb + self.label_emb(y)
                h = x
                for module in self.input_blocks:
                    self.current_h_shape = (h.shape[0], h.shape[1], h.shape[2], h.shape[3])
                    h = module(h, emb, context)
                    hs.append(h)
                self.current_h_shape = (h.shape[0], h.shape[1], h.shape[2], h.shape[3])
                h = self.middle_block(h, emb, context)
            h = aligned_adding(h, total_controlnet_embedding.pop(), require_inpaint_hijack)
            for module in self.output_blocks:
                self.current_h_shape = (h.shape[0], h.shape[1], h.shape[2], h.shape[3])
                h = torch.cat([h, aligned_adding(hs.pop(), total_controlnet_embedding.pop(),
                                                 require_inpaint_hijack)], dim=1)
                h = module(h, emb, context)
            h = h.type(x.dtype)
            h = self.out(h)
            return h

        def forward_webui(*args, **kwargs):
            return forward(*args, **kwargs)


        # ldm's timestep_embedding (imported at line 19): the tiny UNet's own, past the stub's patched subclass
        self.timestep_embedding = next(sys.modules[c.__module__].timestep_embedding for c in type(model).__mro__
                                       if hasattr(sys.modules[c.__module__], "timestep_embedding"))
        model._original_forward = model.forward
        outer.original_forward = model.forward
        model.forward = forward_webui.__get__(model, type(model))

    def restore(self):
        self.control_params = None
        if self.model is not None:
            if hasattr(self.model, "_original_forward"):
                self.model.forward = self.model._original_forward
                del self.model._original_forward
