"""Mirrors modules/sd_samplers_cfg_denoiser.py ``CFGDenoiser.forward``: how cond and uncond rows are batched
into UNet calls (``batch_cond_uncond``, cond/uncond of different lengths as separate calls,
``pad_cond_uncond``/``pad_cond_uncond_v0``, skipped uncond for NGMS and Skip Early CFG, AND repeats,
image conditioning, the refiner switch at the start of a step, the model wrapper made from the model
loaded now). Edit (instruct-pix2pix) models, mask blending and the cfg callbacks are left out."""

from __future__ import annotations

from typing import Any

import torch

from modules import prompt_parser, sd_samplers_common, shared


def catenate_conds(conds: list[Any]) -> Any:
    if not isinstance(conds[0], dict):
        return torch.cat(conds)
    return {key: torch.cat([x[key] for x in conds]) for key in conds[0].keys()}


def subscript_cond(cond: Any, a: int, b: int) -> Any:
    if not isinstance(cond, dict):
        return cond[a:b]
    return {key: vec[a:b] for key, vec in cond.items()}


def pad_cond(tensor: Any, repeats: int, empty: torch.Tensor) -> Any:
    if not isinstance(tensor, dict):
        return torch.cat([tensor, empty.repeat((tensor.shape[0], repeats, 1))], axis=1)
    tensor["crossattn"] = pad_cond(tensor["crossattn"], repeats, empty)
    return tensor


def _crossattn(cond: Any) -> torch.Tensor:
    return cond["crossattn"] if isinstance(cond, dict) else cond


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler: Any, p: Any) -> None:
        super().__init__()
        self.sampler = sampler
        self.model_wrap = None
        self.p = p
        self.step = 0
        self.total_steps = 1
        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False

    @property
    def inner_model(self) -> Any:
        """sd_samplers_kdiffusion.py lines 54-64: the denoiser around the model loaded now, made on first use
        and again after a refiner switch."""
        if self.model_wrap is None:
            from modules.sd_samplers import CompVisDenoiser

            self.model_wrap = CompVisDenoiser(shared.sd_model)
        return self.model_wrap

    def update_inner_model(self) -> None:
        self.model_wrap = None
        c, uc = self.p.get_conds()
        self.sampler.sampler_extra_args["cond"] = c
        self.sampler.sampler_extra_args["uncond"] = uc

    def combine_denoised(self, x_out: torch.Tensor, conds_list: list, uncond: Any, cond_scale: float) -> torch.Tensor:
        denoised_uncond = x_out[-_crossattn(uncond).shape[0]:]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def pad_cond_uncond(self, cond: Any, uncond: Any) -> tuple[Any, Any]:
        empty = shared.sd_model.cond_stage_model_empty_prompt
        num_repeats = (_crossattn(cond).shape[1] - _crossattn(uncond).shape[1]) // empty.shape[1]
        if num_repeats < 0:
            cond = pad_cond(cond, -num_repeats, empty)
            self.padded_cond_uncond = True
        elif num_repeats > 0:
            uncond = pad_cond(uncond, num_repeats, empty)
            self.padded_cond_uncond = True
        return cond, uncond

    def pad_cond_uncond_v0(self, cond: Any, uncond: Any) -> tuple[Any, Any]:
        is_dict_cond = isinstance(uncond, dict)
        uncond_vec = uncond["crossattn"] if is_dict_cond else uncond
        width = _crossattn(cond).shape[1]
        if uncond_vec.shape[1] < width:
            last_vector_repeated = uncond_vec[:, -1:].repeat([1, width - uncond_vec.shape[1], 1])
            uncond_vec = torch.hstack([uncond_vec, last_vector_repeated])
            self.padded_cond_uncond_v0 = True
        elif uncond_vec.shape[1] > width:
            uncond_vec = uncond_vec[:, :width]
            self.padded_cond_uncond_v0 = True
        if is_dict_cond:
            uncond["crossattn"] = uncond_vec
        else:
            uncond = uncond_vec
        return cond, uncond

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, uncond: Any, cond: Any, cond_scale: float,
                s_min_uncond: float, image_cond: torch.Tensor) -> torch.Tensor:
        opts = shared.opts
        if sd_samplers_common.apply_refiner(self, sigma):
            cond = self.sampler.sampler_extra_args["cond"]
            uncond = self.sampler.sampler_extra_args["uncond"]
        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)

        batch_size = len(conds_list)
        repeats = [len(conds_list[i]) for i in range(batch_size)]

        if isinstance(uncond, dict):
            def make_condition_dict(c_crossattn: Any, c_concat: torch.Tensor) -> dict:
                return {**c_crossattn, "c_concat": [c_concat]}
        else:
            def make_condition_dict(c_crossattn: Any, c_concat: torch.Tensor) -> dict:
                return {"c_crossattn": [c_crossattn], "c_concat": [c_concat]}

        x_in = torch.cat([torch.stack([x[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([torch.stack([sigma[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [sigma])
        image_cond_in = torch.cat([torch.stack([image_cond[i] for _ in range(n)]) for i, n in enumerate(repeats)]
                                  + [image_cond])

        skip_uncond = False
        if opts.skip_early_cond != 0. and self.step / self.total_steps <= opts.skip_early_cond:
            skip_uncond = True
            self.p.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            skip_uncond = True
            self.p.extra_generation_params["NGMS"] = s_min_uncond

        if skip_uncond:
            x_in = x_in[:-batch_size]
            sigma_in = sigma_in[:-batch_size]

        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        if opts.pad_cond_uncond_v0 and _crossattn(tensor).shape[1] != _crossattn(uncond).shape[1]:
            tensor, uncond = self.pad_cond_uncond_v0(tensor, uncond)
        elif opts.pad_cond_uncond and _crossattn(tensor).shape[1] != _crossattn(uncond).shape[1]:
            tensor, uncond = self.pad_cond_uncond(tensor, uncond)

        if _crossattn(tensor).shape[1] == _crossattn(uncond).shape[1] or skip_uncond:
            cond_in = tensor if skip_uncond else catenate_conds([tensor, uncond])
            if opts.batch_cond_uncond:
                x_out = self.inner_model(x_in, sigma_in, cond=make_condition_dict(cond_in, image_cond_in))
            else:
                x_out = torch.zeros_like(x_in)
                for a in range(0, x_out.shape[0], batch_size):
                    b = a + batch_size
                    x_out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b], cond=make_condition_dict(
                        subscript_cond(cond_in, a, b), image_cond_in[a:b]))
        else:
            x_out = torch.zeros_like(x_in)
            rows = _crossattn(tensor).shape[0]
            batch_size = batch_size * 2 if opts.batch_cond_uncond else batch_size
            for a in range(0, rows, batch_size):
                b = min(a + batch_size, rows)
                x_out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b], cond=make_condition_dict(
                    subscript_cond(tensor, a, b), image_cond_in[a:b]))
            if not skip_uncond:
                n = _crossattn(uncond).shape[0]
                x_out[-n:] = self.inner_model(x_in[-n:], sigma_in[-n:],
                                              cond=make_condition_dict(uncond, image_cond_in[-n:]))

        if skip_uncond:
            fake_uncond = torch.cat([x_out[i:i + 1] for i in [c[0][0] for c in conds_list]])
            x_out = torch.cat([x_out, fake_uncond])
            denoised = self.combine_denoised(x_out, conds_list, uncond, 1.0)
        else:
            denoised = self.combine_denoised(x_out, conds_list, uncond, cond_scale)
        self.step += 1
        return denoised
