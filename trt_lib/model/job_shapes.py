"""Every UNet call shape one WebUI generation job produces, worked out before sampling starts.

This mirrors how the WebUI's CFG denoiser batches its calls (modules/sd_samplers_cfg_denoiser.py,
``CFGDenoiser.forward``), so that a job no engine covers is rejected before its first step rather than in
the middle of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .profiles import LATENT_SCALE, NEGATIVE, PROMPT, UnetCall, context_len


@dataclass(frozen=True)
class Pass:
    """One sampling pass (the first pass, or the hires pass) with its prompt lengths in tokens (75·k)."""

    width: int
    height: int
    cond_tokens: int
    uncond_tokens: int
    hires: bool = False


@dataclass(frozen=True)
class CallSource:
    """What of the job one call shape carries, in the user's terms, so that a message about it can say
    "batch size 2" and "the negative prompt" rather than engine rows."""

    images: int
    """The job's batch size (images)."""
    prompts: frozenset[str]
    """Which rows the call carries: :data:`PROMPT`, :data:`NEGATIVE` or both."""
    passes: frozenset[str] = field(default_factory=frozenset)
    """"first pass", "hires pass"."""
    and_parts: int = 1
    """Prompt rows per image (sub-prompts joined with AND)."""

    def merged(self, other: CallSource) -> CallSource:
        return CallSource(self.images, self.prompts | other.prompts, self.passes | other.passes,
                          max(self.and_parts, other.and_parts))


@dataclass(frozen=True)
class JobSpec:
    """What of a job decides the UNet call shapes, read from the WebUI's processing object and settings."""

    batch_size: int
    passes: tuple[Pass, ...]
    cond_repeats: int = 1
    """Most sub-prompts joined with AND in one image's prompt: each is its own cond row."""
    batch_cond_uncond: bool = True
    pad_cond_uncond: bool = False
    pad_cond_uncond_v0: bool = False
    skips_uncond: bool = False
    """True when some steps drop the uncond rows (Negative Guidance minimum sigma, Skip Early CFG)."""


def unet_calls(spec: JobSpec) -> list[UnetCall]:
    """All distinct call shapes of the job, sorted, as the CFG denoiser will make them."""
    return sorted(call_sources(spec), key=lambda c: (c.latent_height, c.latent_width, c.context_len, c.batch))


def call_sources(spec: JobSpec) -> dict[UnetCall, CallSource]:
    """Every distinct call shape of the job with what of the job it carries."""
    found: dict[UnetCall, CallSource] = {}
    hires = any(p.hires for p in spec.passes)  # without a hires pass, "first pass" would only be noise
    for p in spec.passes:
        passes = frozenset({"hires pass" if p.hires else "first pass"} if hires else ())
        for call, prompts in _pass_calls(spec, p):
            source = CallSource(spec.batch_size, frozenset(prompts), passes, spec.cond_repeats)
            found[call] = found[call].merged(source) if call in found else source
    return found


def _pass_calls(spec: JobSpec, p: Pass) -> list[tuple[UnetCall, tuple[str, ...]]]:
    b = spec.batch_size
    cond_rows = b * spec.cond_repeats
    cond_ctx, uncond_ctx = context_len(p.cond_tokens), context_len(p.uncond_tokens)
    if cond_ctx != uncond_ctx and spec.pad_cond_uncond_v0:  # checked first, as the denoiser does
        uncond_ctx = cond_ctx  # uncond's last column repeated or cut to cond's length
    elif cond_ctx != uncond_ctx and spec.pad_cond_uncond:
        uncond_ctx = cond_ctx = max(cond_ctx, uncond_ctx)  # the shorter padded with empty-prompt chunks

    def call(rows: int, ctx: int) -> UnetCall:
        return UnetCall(rows, p.height // LATENT_SCALE, p.width // LATENT_SCALE, ctx)

    def parts(start: int, end: int) -> tuple[str, ...]:  # the denoiser's rows: cond rows, then uncond rows
        return tuple(name for name, lo, hi in ((PROMPT, 0, cond_rows), (NEGATIVE, cond_rows, cond_rows + b))
                     if start < hi and end > lo)

    calls = []
    if cond_ctx == uncond_ctx:
        rows = cond_rows + b
        if spec.batch_cond_uncond:
            calls.append((call(rows, cond_ctx), (PROMPT, NEGATIVE)))
            if spec.skips_uncond:
                calls.append((call(cond_rows, cond_ctx), (PROMPT,)))
        else:
            calls += [(call(min(b, rows - start), cond_ctx), parts(start, min(start + b, rows)))
                      for start in range(0, rows, b)]
    else:
        chunk = 2 * b if spec.batch_cond_uncond else b
        calls += [(call(min(chunk, cond_rows - start), cond_ctx), (PROMPT,)) for start in range(0, cond_rows, chunk)]
        calls.append((call(b, uncond_ctx), (NEGATIVE,)))
    return calls
