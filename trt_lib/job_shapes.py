"""Every UNet call shape one WebUI generation job produces, worked out before sampling starts.

This mirrors how the WebUI's CFG denoiser batches its calls (modules/sd_samplers_cfg_denoiser.py,
``CFGDenoiser.forward``), so that a job no engine covers is rejected before its first step rather than in
the middle of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .profiles import LATENT_SCALE, UnetCall, context_len


@dataclass(frozen=True)
class Pass:
    """One sampling pass (the first pass, or the hires pass) with its prompt lengths in tokens (75·k)."""

    width: int
    height: int
    cond_tokens: int
    uncond_tokens: int


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
    calls: set[UnetCall] = set()
    for p in spec.passes:
        calls.update(_pass_calls(spec, p))
    return sorted(calls, key=lambda c: (c.latent_height, c.latent_width, c.context_len, c.batch))


def _pass_calls(spec: JobSpec, p: Pass) -> set[UnetCall]:
    b = spec.batch_size
    cond_rows = b * spec.cond_repeats
    cond_ctx, uncond_ctx = context_len(p.cond_tokens), context_len(p.uncond_tokens)
    if cond_ctx != uncond_ctx and spec.pad_cond_uncond_v0:  # checked first, as the denoiser does
        uncond_ctx = cond_ctx  # uncond's last column repeated or cut to cond's length
    elif cond_ctx != uncond_ctx and spec.pad_cond_uncond:
        uncond_ctx = cond_ctx = max(cond_ctx, uncond_ctx)  # the shorter padded with empty-prompt chunks

    def call(rows: int, ctx: int) -> UnetCall:
        return UnetCall(rows, p.height // LATENT_SCALE, p.width // LATENT_SCALE, ctx)

    calls = set()
    if cond_ctx == uncond_ctx:
        rows = cond_rows + b
        if spec.batch_cond_uncond:
            calls.add(call(rows, cond_ctx))
            if spec.skips_uncond:
                calls.add(call(cond_rows, cond_ctx))
        else:
            calls.update(call(min(b, rows - start), cond_ctx) for start in range(0, rows, b))
    else:
        chunk = 2 * b if spec.batch_cond_uncond else b
        calls.update(call(min(chunk, cond_rows - start), cond_ctx) for start in range(0, cond_rows, chunk))
        calls.add(call(b, uncond_ctx))
    return calls
