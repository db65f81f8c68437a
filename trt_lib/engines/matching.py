"""Pick the engine and profile for each UNet call of a job, or say precisely why none fits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import NoProfileError
from ..model.families import Family
from ..model.profiles import PIXEL_GRID, Profile, Range, UnetCall, tokens_for_context
from ..store.engine_store import EngineEntry

if TYPE_CHECKING:
    from ..model.job_shapes import CallSource


@dataclass(frozen=True)
class Choice:
    """The engine and the profile index in it that run one call shape."""

    entry: EngineEntry
    profile_index: int


def choose(entries: Sequence[EngineEntry], call: UnetCall, controlnet: bool = False) -> Choice | None:
    """The narrowest profile (fastest engine) among ``entries`` that covers ``call``; newest wins ties.

    A call with ControlNet residuals runs on ControlNet-ready engines only; other calls run on any engine,
    plain ones (no residual inputs to bind) first at equal width.
    """
    best: tuple[tuple[int, bool], Choice] | None = None
    for entry in sorted(entries, key=lambda e: e.created, reverse=True):
        if controlnet and not entry.controlnet:
            continue
        for index, profile in enumerate(entry.parsed_profiles):
            rank = (profile.spread(), entry.controlnet)
            if profile.covers(call) and (best is None or rank < best[0]):
                best = (rank, Choice(entry, index))
    return best[1] if best else None


def plan(entries: Sequence[EngineEntry], calls: Sequence[UnetCall], family: Family, checkpoint: str,
         sources: Mapping[UnetCall, CallSource] | None = None, controlnet: bool = False) -> dict[UnetCall, Choice]:
    """A choice for every call of a job; :class:`NoProfileError` that says what is missing otherwise.
    ``sources`` (from :func:`~trt_lib.model.job_shapes.call_sources`) lets the message speak of batch size and
    of the prompt or negative prompt rather than of engine rows; ``controlnet``: only ControlNet-ready
    engines can take the job."""
    entries = able(entries, controlnet, checkpoint)
    chosen: dict[UnetCall, Choice] = {}
    missing = []
    for call in calls:
        choice = choose(entries, call)
        if choice is None:
            missing.append(call)
        else:
            chosen[call] = choice
    if missing:
        raise uncovered(entries, missing, calls, family, checkpoint, sources)
    return chosen


def able(entries: Sequence[EngineEntry], controlnet: bool, checkpoint: str) -> Sequence[EngineEntry]:
    """The engines that can take a job's calls: all, or with ControlNet its ControlNet-ready ones
    (:class:`NoProfileError` naming the build option when there are none)."""
    if not controlnet:
        return entries
    ready = [e for e in entries if e.controlnet]
    if not ready:
        raise NoProfileError(no_controlnet_engine(checkpoint))
    return ready


def uncovered(entries: Sequence[EngineEntry], missing: Sequence[UnetCall], calls: Sequence[UnetCall],
              family: Family, checkpoint: str,
              sources: Mapping[UnetCall, CallSource] | None = None) -> NoProfileError:
    """The error for ``missing`` calls of a job of ``calls`` that no engine of ``entries`` covers."""
    needs = [need(entries, call, (sources or {}).get(call)) for call in missing]
    return NoProfileError(explain(entries, needs, calls, family, checkpoint), needs=needs)


def no_controlnet_engine(checkpoint: str) -> str:
    return (f"ControlNet is on for this job, but no TensorRT engine of {checkpoint} is ControlNet-ready. Build one "
            "with \"ControlNet-ready\" ticked in the TensorRT tab (API: \"controlnet\": true), or choose None for SD "
            "Unet for ControlNet jobs.")


def need(entries: Sequence[EngineEntry], call: UnetCall, source: CallSource | None = None) -> str:
    """One uncovered call as a sentence: what it needs, the nearest engine and what of the call it misses."""
    nearest = _nearest(entries, call)
    if nearest is None:
        return f"Needed: {call.describe(source)}."
    entry, profile = nearest
    return (f"Needed: {call.describe(source)}; the nearest engine, {entry.id} ({profile.label()}), misses: "
            + "; ".join(profile.misses(call, source)) + ".")


def explain(entries: Sequence[EngineEntry], needs: Sequence[str], calls: Sequence[UnetCall], family: Family,
            checkpoint: str) -> str:
    """The user-facing message for a job no engine covers: what is out, by how much, and what to build.

    One paragraph of whole sentences: the WebUI shows an error as ``html.escape``d text in a ``<div
    class='error'>`` with no ``white-space`` rule (modules/call_queue.py, style.css), where line breaks
    vanish, and the API returns it as one string. Engines with baked LoRAs are answered with a bake of the
    same LoRAs: no other engine can stand in for them."""
    bake = entries[0].lora_label if entries and len({e.lora_label for e in entries}) == 1 else ""
    parts = [f"No TensorRT engine for {checkpoint}{f' with LoRA {bake}' if bake else ''} covers this generation.",
             *needs]
    if entries:
        parts.append("Engines for this checkpoint: " + "; ".join(f"{e.id}: {e.label()}" for e in entries) + ".")
    else:
        parts.append("There is no engine for this checkpoint yet.")
    parts.append(suggestion(calls, family, bake))
    return " ".join(parts)


def suggestion(calls: Sequence[UnetCall], family: Family, bake: str = "") -> str:
    """Name a preset that covers every call, or the custom profile to build (with the LoRAs ``bake`` baked in,
    when given)."""
    tab = f"in the TensorRT tab with \"{bake}\" in its LoRA box" if bake else "in the TensorRT tab"
    off_grid = [c for c in calls if c.latent_height % (PIXEL_GRID // 8) or c.latent_width % (PIXEL_GRID // 8)]
    if off_grid:
        c = off_grid[0]
        return (f"{c.width}x{c.height} px is not on the {PIXEL_GRID} px grid engines use: choose a size (or hires "
                f"upscale factor) that gives multiples of {PIXEL_GRID}, or use the PyTorch UNet for this job.")
    for preset in family.presets:
        if all(preset.profile.covers(c) for c in calls):
            return f"Build the preset \"{preset.label}\" ({preset.name}) {tab}."
    needed = covering_profile(calls)
    problems = needed.problems(family)
    if problems:
        return "No engine can cover this job: " + "; ".join(problems) + ". Use the PyTorch UNet for it."
    return (f"Build a custom profile {tab}: batch size {needed.batch}, width {needed.width}, "
            f"height {needed.height}, tokens {needed.tokens}.")


def covering_profile(calls: Sequence[UnetCall]) -> Profile:
    """The narrowest profile covering ``calls`` (batch counts images: the engine takes up to twice that)."""

    def span(values: list[int]) -> Range:
        return Range(min(values), min(values), max(values))

    most = -(-max(c.batch for c in calls) // 2)  # cond and uncond rows share one engine call
    least = min(min(c.batch for c in calls), most)
    return Profile(
        batch=Range(least, least, most),
        height=span([c.height for c in calls]),
        width=span([c.width for c in calls]),
        tokens=span([tokens_for_context(c.context_len) for c in calls]),
    )


def _nearest(entries: Sequence[EngineEntry], call: UnetCall) -> tuple[EngineEntry, Profile] | None:
    ranked = sorted(((len(p.misses(call)), i, e, p) for i, e in enumerate(entries) for p in e.parsed_profiles),
                    key=lambda t: t[:2])
    return (ranked[0][2], ranked[0][3]) if ranked else None
