"""Before sampling starts, work out every UNet call shape of the job and make sure an engine covers each.

Runs from the always-on script's ``process_before_every_sampling``, when the conditionings exist and the
hires size is known: before the first pass it checks both passes (with the first pass's prompt lengths),
before the hires pass that pass again with its own prompts. ControlNet jobs (:mod:`.controlnet`) are checked
too: their units, and a ControlNet-ready engine for every call. The WebUI reports and swallows exceptions
raised in script hooks, so a rejection is handed to what the job's first UNet call will run (the engine, or
the forward another extension put on the UNet), which raises it before any work; "fall back" switches this
job to the PyTorch UNet instead and ``postprocess`` switches back.
"""

from __future__ import annotations

from typing import Any

from modules import sd_unet, shared

from trt_lib.engines.lora_refit import describe, key_of_entries
from trt_lib.engines.matching import plan
from trt_lib.errors import NoProfileError, TrtError
from trt_lib.model.job_shapes import JobSpec, Pass, call_sources, unet_calls
from trt_lib.model.profiles import TOKENS_PER_CHUNK, tokens_for_context

from . import controlnet, loaded_model, prompt_loras, reference_runtime, settings
from .provider import TrtUnet, checkpoint_mismatch, for_api

FELL_BACK = "_trt_fell_back"


class UnetHookedError(TrtError):
    status_code = 409


def before_sampling(p: Any, c: Any = None, uc: Any = None) -> None:
    """Check the whole job once; reject (via the engine) or fall back as the settings say."""
    unet = sd_unet.current_unet
    if not isinstance(unet, TrtUnet):
        if getattr(p, "is_hr_pass", False) and getattr(p, "hr_checkpoint_info", None) is not None \
                and not getattr(p, FELL_BACK, False):
            other_checkpoint_pass(p, c, uc)  # loaded as a new model (another config): no engine applied
        return
    unet.pending = None  # a rejection of an earlier job that never reached its UNet is not this job's
    try:
        model = loaded_model.current()
        if model.checkpoint != unet.option.checkpoint:
            if getattr(p, "is_hr_pass", False):
                other_checkpoint_pass(p, c, uc)
                return
            raise checkpoint_mismatch(unet.option, model.checkpoint)
        forward = shared.sd_model.model.diffusion_model.__dict__.get("forward")
        with_controlnet = isinstance(forward, controlnet.EngineForward)
        if with_controlnet:
            problems = controlnet.unsupported(forward.control_params)
            if problems:
                raise controlnet.unit_error(problems)
        hook = None if with_controlnet else loaded_model.forward_hook_owner(shared.sd_model.model.diffusion_model)
        if hook is not None:
            note = controlnet.install()
            raise UnetHookedError(
                f"another extension replaced the UNet's forward for this job ({hook}{'; ' + note if note else ''}),"
                " and what it adds cannot reach a TensorRT engine. Choose None for SD Unet for such jobs, or set "
                "the TensorRT fallback setting.")
        hypernetworks = loaded_model.hypernetworks()
        if hypernetworks:
            raise UnetHookedError(
                f"this job uses the hypernetwork{'s' if len(hypernetworks) > 1 else ''} {', '.join(hypernetworks)}, "
                "which changes attention inside the UNet and cannot reach a TensorRT engine. Remove <hypernet:…> "
                "from the prompt (and set Settings → Hypernetwork to None), choose None for SD Unet for such jobs, "
                "or set the TensorRT fallback setting.")
        session = unet.session
        if session is None:  # activate() could not load the engines; it kept the reason
            raise unet.load_error()
        spec = job_spec(p, c, uc)
        calls = unet_calls(spec)
        plan(session.entries, calls, model.family, model.title, call_sources(spec), controlnet=with_controlnet)
        session.preload(calls[0], with_controlnet)  # an engine that cannot load here is found before any step
        prompt_loras.before_sampling(p, session)
        reference_runtime.note_in_infotext(p, session)
    except TrtError as e:
        reject(p, unet, e)


def other_checkpoint_pass(p: Any, c: Any, uc: Any) -> None:
    """The hires pass runs another checkpoint (``hr_checkpoint_name``) that was loaded without sd_unet being
    applied again (the WebUI re-applies it only when it loads weights into the same model): with "Automatic"
    that checkpoint's own engines take the pass, checked as any pass, if it has some; otherwise, as for an
    engine named explicitly, its PyTorch UNet runs the pass (``TrtUnet.forward``). The next job's checkpoint
    load applies sd_unet for the user's checkpoint again."""
    if shared.opts.sd_unet == "Automatic":
        sd_unet.apply_unet()
        if isinstance(sd_unet.current_unet, TrtUnet):
            before_sampling(p, c, uc)


def hires_on_other_checkpoint(p: Any) -> bool:
    """The job's hires pass will run another checkpoint than the loaded one: the loaded one's engines need not
    cover it (that pass is checked when it starts, against what runs it)."""
    info = getattr(p, "hr_checkpoint_info", None)
    return info is not None and info.model_name != loaded_model.checkpoint_name()


def reject(p: Any, unet: TrtUnet, error: TrtError) -> None:
    if settings.falls_back():
        reason = error.needs[0] if isinstance(error, NoProfileError) else str(error)
        baked = baked_for_pytorch(unet)
        print(f"[TensorRT] using the PyTorch UNet for this job{baked}: {error}")
        p.extra_generation_params["TensorRT"] = f"PyTorch UNet used ({reason.lstrip('- ')}){baked}"
        setattr(p, FELL_BACK, True)
        sd_unet.apply_unet("None")
    else:
        stop_at_first_call(unet, error)


class _RaiseOnce:
    """A UNet instance forward that another extension installed, which raises the job check's error at the
    job's first UNet call and puts that forward back."""

    def __init__(self, model: Any, forward: Any, error: TrtError) -> None:
        self.model, self.forward, self.error = model, forward, error

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.restore()
        raise for_api(self.error)

    def restore(self) -> None:
        if self.model.__dict__.get("forward") is self:
            self.model.forward = self.forward


def stop_at_first_call(unet: TrtUnet, error: TrtError) -> None:
    """Raise ``error`` at the job's first UNet call: the engine's forward, or the forward another extension
    put on the UNet instance (then the engine's is never called, and the error must not wait there)."""
    model = shared.sd_model.model.diffusion_model
    forward = model.__dict__.get("forward")
    if isinstance(forward, controlnet.EngineForward):
        forward.pending = error
    elif loaded_model.forward_hook_owner(model) is not None:
        model.forward = _RaiseOnce(model, forward, error)
    else:
        unet.pending = error


def baked_for_pytorch(unet: TrtUnet) -> str:
    """The engine's baked LoRAs go to the PyTorch UNet that runs the job instead (through the WebUI's Lora
    code); what the infotext and console say about them, "" for an engine without."""
    if not unet.option.lora_label:
        return ""
    try:
        if unet.session is None:
            raise TrtError("its engines did not load")
        added = prompt_loras.add_baked(key_of_entries(unet.session.entries[0].loras))
    except TrtError as e:
        return f", without the engine's baked LoRA {unet.option.lora_label} ({e})"
    return f", with the engine's baked LoRA {describe(added)} applied to it" if added else ""


def after_job(p: Any) -> None:
    """Put the engine back after a job that fell back to PyTorch; drop a rejection nothing raised."""
    unet = sd_unet.current_unet
    if isinstance(unet, TrtUnet):
        unet.pending = None
    forward = getattr(getattr(shared.sd_model, "model", None), "diffusion_model", None)
    forward = getattr(forward, "__dict__", {}).get("forward")
    if isinstance(forward, _RaiseOnce):
        forward.restore()
    if getattr(p, FELL_BACK, False):
        setattr(p, FELL_BACK, False)
        sd_unet.apply_unet()


def job_spec(p: Any, c: Any, uc: Any) -> JobSpec:
    """The shapes-relevant facts of a job, from the processing object, its conds and the settings."""
    opts = shared.opts
    hires = getattr(p, "is_hr_pass", False)
    steps = int((getattr(p, "hr_second_pass_steps", 0) if hires else 0) or getattr(p, "steps", 20) or 20)
    if c is not None and uc is not None:
        lengths = context_pairs(c, uc, steps)
    else:
        lengths = {(prompt_tokens(p), prompt_tokens(p, negative=True))}
    sizes = [] if hires else [(p.width, p.height, False)]
    if hires or (getattr(p, "enable_hr", False) and not getattr(p, "is_img2img", False)
                 and not hires_on_other_checkpoint(p)):
        sizes.append((p.hr_upscale_to_x, p.hr_upscale_to_y, True))
    passes = tuple(Pass(w, h, cond, uncond, hr) for w, h, hr in sizes for cond, uncond in sorted(lengths))
    return JobSpec(
        batch_size=p.batch_size,
        passes=passes,
        cond_repeats=max((len(per_image) for per_image in c.batch), default=1) if c is not None else 1,
        batch_cond_uncond=bool(getattr(opts, "batch_cond_uncond", True)),
        pad_cond_uncond=bool(getattr(opts, "pad_cond_uncond", False)),
        pad_cond_uncond_v0=bool(getattr(opts, "pad_cond_uncond_v0", False)),
        skips_uncond=(getattr(p, "s_min_uncond", 0) or 0) > 0 or (getattr(opts, "skip_early_cond", 0) or 0) > 0,
    )


def context_pairs(c: Any, uc: Any, steps: int) -> set[tuple[int, int]]:
    """(cond, uncond) prompt tokens at every step, read off the WebUI's scheduled conditionings
    (prompt_parser.MulticondLearnedConditioning and lists of ScheduledPromptConditioning), the way
    ``reconstruct_multicond_batch``/``reconstruct_cond_batch`` pick them per step."""
    pairs = set()
    for step in range(steps + 1):
        cond = max(_rows(_at(s.schedules, step)) for per_image in c.batch for s in per_image)
        uncond = max(_rows(_at(schedules, step)) for schedules in uc)
        pairs.add((tokens_for_context(cond), tokens_for_context(uncond)))
    return pairs


def _at(schedules: list, step: int) -> Any:
    return next((s.cond for s in schedules if step <= s.end_at_step), schedules[0].cond)


def _rows(cond: Any) -> int:
    return int((cond["crossattn"] if isinstance(cond, dict) else cond).shape[0])


def prompt_tokens(p: Any, negative: bool = False) -> int:
    """Longest prompt of the job in tokens (75·k), counted by the WebUI's own tokenizer."""
    from modules import sd_hijack

    texts = p.all_negative_prompts if negative else p.all_prompts
    targets = [sd_hijack.model_hijack.get_prompt_lengths(t)[1] for t in set(texts or [""])]
    return max([t for t in targets if isinstance(t, int)] or [TOKENS_PER_CHUNK])
