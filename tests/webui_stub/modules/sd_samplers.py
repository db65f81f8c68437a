"""Mirrors modules/sd_samplers.py with sd_samplers_kdiffusion.py and k-diffusion's CompVis denoisers: an
Euler sampler over the SD noise schedule whose model calls go through :class:`CFGDenoiser`, with
fractional timesteps (``sigma_to_t``) as the real samplers produce them."""

from __future__ import annotations

from typing import Any

import torch

from modules import shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser


def _sd_sigmas() -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


class CompVisDenoiser(torch.nn.Module):
    """k-diffusion's CompVisDenoiser (eps) / CompVisVDenoiser (v) around ``sd_model.apply_model``."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.inner_model = model
        self.sigmas = _sd_sigmas()
        self.log_sigmas = self.sigmas.log()
        self.v = getattr(model, "parameterization", "eps") == "v"

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.double().log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(sigma.shape).to(sigma.dtype)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        s = sigma[:, None, None, None]
        c_in = 1 / (s ** 2 + 1) ** 0.5
        out = self.inner_model.apply_model(x * c_in, self.sigma_to_t(sigma), cond)
        if self.v:
            return x / (s ** 2 + 1) - out * s / (s ** 2 + 1) ** 0.5
        return x - out * s


class KDiffusionSampler:
    def __init__(self, sd_model: Any) -> None:
        self.model_wrap = CompVisDenoiser(sd_model)
        self.sampler_extra_args: dict[str, Any] = {}

    def get_sigmas(self, steps: int) -> torch.Tensor:
        sigmas = self.model_wrap.sigmas
        ramp = torch.linspace(sigmas[-1].log().item(), sigmas[0].log().item(), steps).flip(0).exp()
        return torch.cat([ramp, ramp.new_zeros(1)]).float()

    def _run(self, p: Any, x: torch.Tensor, sigmas: torch.Tensor, c: Any, uc: Any,
             image_conditioning: torch.Tensor) -> torch.Tensor:
        denoiser = CFGDenoiser(self, p)
        denoiser.total_steps = len(sigmas) - 1
        self.sampler_extra_args = {"cond": c, "image_cond": image_conditioning, "uncond": uc,
                                   "cond_scale": p.cfg_scale, "s_min_uncond": p.s_min_uncond}
        shared.state.sampling_steps = len(sigmas) - 1
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            shared.state.sampling_step = i
            denoised = denoiser(x, sigmas[i] * s_in, **self.sampler_extra_args)
            d = (x - denoised) / sigmas[i]
            x = x + d * (sigmas[i + 1] - sigmas[i])
        return x

    def sample(self, p: Any, x: torch.Tensor, conditioning: Any, unconditional_conditioning: Any,
               steps: int | None = None, image_conditioning: torch.Tensor | None = None) -> torch.Tensor:
        sigmas = self.get_sigmas(steps or p.steps)
        return self._run(p, x * sigmas[0], sigmas, conditioning, unconditional_conditioning, image_conditioning)

    def sample_img2img(self, p: Any, x: torch.Tensor, noise: torch.Tensor, conditioning: Any,
                       unconditional_conditioning: Any, steps: int | None = None,
                       image_conditioning: torch.Tensor | None = None) -> torch.Tensor:
        steps = steps or p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
        sigmas = self.get_sigmas(steps)[steps - t_enc - 1:]
        return self._run(p, x + noise * sigmas[0], sigmas, conditioning, unconditional_conditioning,
                         image_conditioning)


def create_sampler(name: str, model: Any) -> KDiffusionSampler:
    if name not in (None, "", "Euler"):
        raise ValueError(f"the stand-in has only the Euler sampler, not {name!r}")
    return KDiffusionSampler(model)
