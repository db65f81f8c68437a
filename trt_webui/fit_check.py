""""Will my settings work?": which engine covers a planned generation, or what to build for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modules import shared

from trt_lib.engines.matching import plan
from trt_lib.errors import NoProfileError
from trt_lib.model.job_shapes import JobSpec, Pass, call_sources, unet_calls
from trt_lib.model.profiles import TOKENS_PER_CHUNK

from . import loaded_model
from .extension import EXT


@dataclass(frozen=True)
class FitQuestion:
    width: int
    height: int
    batch_size: int = 1
    enable_hr: bool = False
    hr_scale: float = 2.0
    prompt_tokens: int = 75
    negative_tokens: int = 75


@dataclass(frozen=True)
class FitAnswer:
    covered: bool
    message: str
    engines: tuple[str, ...] = ()
    runs_here: bool = True
    """False when the covering engines cannot run on this machine (no CUDA GPU, another GPU): the message
    says why."""

    def to_dict(self) -> dict[str, Any]:
        return {"covered": self.covered, "runs_here": self.runs_here, "message": self.message,
                "engines": list(self.engines)}


def _chunks(tokens: int) -> int:
    """Prompt tokens as the WebUI pads them: up to the next multiple of 75, at least 75."""
    return max(1, -(-int(tokens) // TOKENS_PER_CHUNK)) * TOKENS_PER_CHUNK


def check_fit(q: FitQuestion) -> FitAnswer:
    """Answer for the loaded checkpoint, with the WebUI's own CFG batching settings."""
    model = loaded_model.current()
    cond, uncond = _chunks(q.prompt_tokens), _chunks(q.negative_tokens)
    passes = [Pass(q.width, q.height, cond, uncond)]
    if q.enable_hr:
        passes.append(Pass(int(q.width * q.hr_scale), int(q.height * q.hr_scale), cond, uncond, hires=True))
    opts = shared.opts
    spec = JobSpec(q.batch_size, tuple(passes), batch_cond_uncond=bool(opts.batch_cond_uncond),
                   pad_cond_uncond=bool(opts.pad_cond_uncond), pad_cond_uncond_v0=bool(opts.pad_cond_uncond_v0),
                   skips_uncond=bool(getattr(opts, "skip_early_cond", 0)))
    listing = EXT.listing()
    try:
        chosen = plan(EXT.engines_for(model.checkpoint, model.family, listing=listing), unet_calls(spec),
                      model.family, model.title, call_sources(spec))
    except NoProfileError as e:
        unused = [f"- not used: {e.id}: {listing.problems[e.id]}" for e in listing.entries
                  if e.checkpoint == model.checkpoint and e.id in listing.problems]
        return FitAnswer(False, "\n".join([str(e), *unused]), runs_here=False)
    ids = tuple(sorted({c.entry.id for c in chosen.values()}))
    cannot = [f"{i}: {listing.status[i]}" for i in ids if listing.status[i]]
    if cannot:
        return FitAnswer(True, f"Covered by {', '.join(ids)}, but it cannot run here: {'; '.join(cannot)}.", ids,
                         runs_here=False)
    return FitAnswer(True, f"Covered by {', '.join(ids)}.", ids)
