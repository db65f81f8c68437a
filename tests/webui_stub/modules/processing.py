"""Mirrors modules/processing.py's order of events for txt2img and img2img:

``process_images``: ``scripts.before_process`` → override_settings applied (``opts.set(..., is_api=True)``)
→ ``process_images_inner``: ``scripts.process`` → ``p.init`` and ``sd_unet.apply_unet()`` → per batch:
``reload_model_weights`` → ``before_process_batch`` → extra networks parsed and activated →
``process_batch`` → conds → ``p.sample``: ``process_before_every_sampling`` → sampling (→ for hires fix:
the hires checkpoint loaded under ``SkipWritingToConfig`` (processing.py lines 1256-1262, 1359-1360; the
loaded one again without ``hr_checkpoint_name``), conds again, ``before_hr``, ``process_before_every_sampling``,
sampling at the upscaled size) → ``post_sample`` → ``scripts.postprocess`` → old settings put back
(without re-applying sd_unet).

Images stay latents (no VAE); ``Processed.images`` holds the final latents of each batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from modules import devices, extra_networks, prompt_parser, scripts, sd_models, sd_samplers, sd_unet, shared
from modules.shared import opts

opt_C = 4
opt_f = 8


@dataclass(repr=False)
class StableDiffusionProcessing:
    cached_uc: ClassVar[list] = [None, None]
    cached_c: ClassVar[list] = [None, None]
    """The prompt-conditioning caches shared by all jobs (real processing.py 188-189; the stand-in computes
    conds afresh each job and only keeps these for what ControlNet and this extension do to them)."""
    sd_model: Any = None
    prompt: str | list[str] = ""
    negative_prompt: str | list[str] = ""
    seed: int = 0
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 4
    cfg_scale: float = 7.0
    width: int = 64
    height: int = 64
    sampler_name: str = "Euler"
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    disable_extra_networks: bool = False
    extra_generation_params: dict[str, Any] | None = None
    script_args: tuple = ()
    scripts: Any = None
    is_api: bool = False
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    is_hr_pass: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.s_min_uncond = self.s_min_uncond if self.s_min_uncond is not None else opts.s_min_uncond
        self.c = None
        self.uc = None
        self.iteration = 0
        self.extra_network_data: dict = {}
        self.refiner_checkpoint_info = None
        self.comments: dict[str, int] = {}

    def comment(self, text: str) -> None:
        self.comments[text] = 1

    def setup_prompts(self) -> None:
        n = self.batch_size * self.n_iter
        self.all_prompts = list(self.prompt) if isinstance(self.prompt, list) else n * [self.prompt]
        neg = self.negative_prompt
        self.all_negative_prompts = list(neg) if isinstance(neg, list) else n * [neg]

    def parse_extra_network_prompts(self) -> None:
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def setup_conds(self) -> None:
        model = shared.sd_model
        self.uc = prompt_parser.get_learned_conditioning(model, self.negative_prompts, self.steps)
        self.c = prompt_parser.get_multicond_learned_conditioning(model, self.prompts, self.steps)

    def get_conds(self) -> tuple[Any, Any]:
        return self.c, self.uc

    def init(self, all_prompts: list[str], all_seeds: list[int], all_subseeds: list[int]) -> None:
        pass

    def noise(self) -> torch.Tensor:
        """The batch's starting noise (``p.rng.next()``), reproducible from the seeds."""
        shape = (opt_C, self.height // opt_f, self.width // opt_f)
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in self.seeds]
                           ).to(devices.device, devices.dtype_unet)

    def txt2img_image_conditioning(self, x: torch.Tensor) -> torch.Tensor:
        model = shared.sd_model
        if model.model.conditioning_key in {"hybrid", "concat"} or model.is_sdxl_inpaint:
            masked = torch.zeros(x.shape[0], 4, x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
            return torch.nn.functional.pad(masked, (0, 0, 0, 0, 1, 0), value=1.0)
        return x.new_zeros(x.shape[0], 5, 1, 1)

    def sample(self, conditioning: Any, unconditional_conditioning: Any, seeds: list[int], subseeds: list[int],
               subseed_strength: float, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError()

    def close(self) -> None:
        self.c = None
        self.uc = None


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hr_upscale_to_x = self.width
        self.hr_upscale_to_y = self.height
        self.hr_c = None
        self.hr_uc = None
        self.hr_checkpoint_info = None

    def calculate_target_resolution(self) -> None:
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            self.hr_upscale_to_x = int(self.width * self.hr_scale)
            self.hr_upscale_to_y = int(self.height * self.hr_scale)
        else:
            self.hr_upscale_to_x = self.hr_resize_x or self.hr_resize_y * self.width // self.height
            self.hr_upscale_to_y = self.hr_resize_y or self.hr_resize_x * self.height // self.width

    def init(self, all_prompts: list[str], all_seeds: list[int], all_subseeds: list[int]) -> None:
        if self.enable_hr:
            self.denoising_strength = 0.7 if self.denoising_strength is None else self.denoising_strength
            if self.hr_checkpoint_name and self.hr_checkpoint_name != "Use same checkpoint":
                self.hr_checkpoint_info = sd_models.get_closet_checkpoint_match(self.hr_checkpoint_name)
                if self.hr_checkpoint_info is None:
                    raise Exception(f"Could not find checkpoint with name {self.hr_checkpoint_name}")
                self.extra_generation_params["Hires checkpoint"] = self.hr_checkpoint_info.short_title
            self.calculate_target_resolution()
            self.extra_generation_params["Hires upscale"] = self.hr_scale

    def calculate_hr_conds(self) -> None:
        model = shared.sd_model
        steps = self.hr_second_pass_steps or self.steps
        self.hr_uc = prompt_parser.get_learned_conditioning(model, self.negative_prompts, steps)
        self.hr_c = prompt_parser.get_multicond_learned_conditioning(model, self.prompts, steps)

    def get_conds(self) -> tuple[Any, Any]:
        return (self.hr_c, self.hr_uc) if self.is_hr_pass else (self.c, self.uc)

    def sample(self, conditioning: Any, unconditional_conditioning: Any, seeds: list[int], subseeds: list[int],
               subseed_strength: float, prompts: list[str]) -> torch.Tensor:
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.noise()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=x, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning,
                                      image_conditioning=self.txt2img_image_conditioning(x))
        if not self.enable_hr:
            return samples
        with sd_models.SkipWritingToConfig():  # the hires pass's checkpoint (the same one when it is None)
            sd_models.reload_model_weights(info=self.hr_checkpoint_info)
        return self.sample_hr_pass(samples)

    def sample_hr_pass(self, samples: torch.Tensor) -> torch.Tensor:
        self.is_hr_pass = True
        target = (self.hr_upscale_to_y // opt_f, self.hr_upscale_to_x // opt_f)
        samples = torch.nn.functional.interpolate(samples, size=target, mode="bilinear")
        self.sampler = sd_samplers.create_sampler(self.sampler_name, shared.sd_model)
        noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(self.seeds[0] + 1)).to(samples)
        image_conditioning = self.txt2img_image_conditioning(samples)
        with devices.autocast():
            self.calculate_hr_conds()
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc,
                                              steps=self.hr_second_pass_steps or self.steps,
                                              image_conditioning=image_conditioning)
        self.is_hr_pass = False
        return samples


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """``init_latent`` (and an optional latent-sized ``mask``, 1 = repaint) stand in for the VAE-encoded
    init image and mask."""

    init_latent: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.denoising_strength = 0.75 if self.denoising_strength is None else self.denoising_strength

    def init(self, all_prompts: list[str], all_seeds: list[int], all_subseeds: list[int]) -> None:
        self.height, self.width = self.init_latent.shape[2] * opt_f, self.init_latent.shape[3] * opt_f
        self.init_latent = self.init_latent.expand(self.batch_size, -1, -1, -1).to(devices.dtype_unet)
        model = shared.sd_model
        if model.model.conditioning_key in {"hybrid", "concat"} or model.is_sdxl_inpaint:
            mask = self.mask if self.mask is not None else torch.ones_like(self.init_latent[:, :1])
            mask = mask.expand(self.batch_size, 1, -1, -1).to(self.init_latent)
            self.image_conditioning = torch.cat([mask, self.init_latent * (1 - mask)], dim=1)
        else:
            self.image_conditioning = self.init_latent.new_zeros(self.batch_size, 5, 1, 1)

    def sample(self, conditioning: Any, unconditional_conditioning: Any, seeds: list[int], subseeds: list[int],
               subseed_strength: float, prompts: list[str]) -> torch.Tensor:
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.noise()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=self.init_latent, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        return self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning,
                                           image_conditioning=self.image_conditioning)


class Processed:
    def __init__(self, p: StableDiffusionProcessing, images_list: list[torch.Tensor]) -> None:
        self.images = images_list
        self.prompt = p.prompt
        self.extra_generation_params = dict(p.extra_generation_params)
        params = ", ".join(f"{k}: {v}" for k, v in self.extra_generation_params.items())
        self.infotexts = [f"{p.prompt}\nNegative prompt: {p.negative_prompt}\nSteps: {p.steps}"
                          + (f", {params}" if params else "")] * len(images_list)
        self.info = self.infotexts[0] if self.infotexts else ""

    def js(self) -> str:
        return json.dumps({"infotexts": self.infotexts, "extra_generation_params": self.extra_generation_params})


def process_images(p: StableDiffusionProcessing) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)

    stored_opts = {k: opts.data[k] if k in opts.data else opts.get_default(k)
                   for k in p.override_settings.keys() if k in opts.data}
    try:
        if sd_models.checkpoint_aliases.get(p.override_settings.get("sd_model_checkpoint")) is None:
            p.override_settings.pop("sd_model_checkpoint", None)
            sd_models.reload_model_weights()
        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)
            if k == "sd_model_checkpoint":
                sd_models.reload_model_weights()
        res = process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(opts, k, v)
    return res


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    devices.torch_gc()
    p.sd_model = shared.sd_model
    p.setup_prompts()
    p.all_seeds = [int(p.seed) + x for x in range(len(p.all_prompts))]
    p.all_subseeds = list(p.all_seeds)

    if p.refiner_checkpoint not in (None, "", "None", "none"):
        p.refiner_checkpoint_info = sd_models.get_closet_checkpoint_match(p.refiner_checkpoint)
        if p.refiner_checkpoint_info is None:
            raise Exception(f"Could not find checkpoint with name {p.refiner_checkpoint}")

    if p.scripts is not None:
        p.scripts.process(p)

    output = []
    with torch.no_grad(), p.sd_model.ema_scope():
        with devices.autocast():
            p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
            sd_unet.apply_unet()

        for n in range(p.n_iter):
            p.iteration = n
            if shared.state.interrupted:
                break
            sd_models.reload_model_weights()  # model can be changed for example by refiner
            p.sd_model = shared.sd_model
            batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
            p.prompts, p.negative_prompts = p.all_prompts[batch], p.all_negative_prompts[batch]
            p.seeds, p.subseeds = p.all_seeds[batch], p.all_subseeds[batch]

            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds,
                                               subseeds=p.subseeds)
            p.parse_extra_network_prompts()
            if not p.disable_extra_networks:
                with devices.autocast():
                    extra_networks.activate(p, p.extra_network_data)
            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)

            p.setup_conds()
            with devices.autocast():
                samples = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds,
                                   subseeds=p.subseeds, subseed_strength=0.0, prompts=p.prompts)
            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples)
                p.scripts.post_sample(p, ps)
                samples = ps.samples
            devices.test_for_nans(samples, "unet")
            output.append(samples)

    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)
    devices.torch_gc()
    res = Processed(p, output)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
