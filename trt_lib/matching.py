"""Pick the engine and profile for each UNet call of a job, or say precisely why none fits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import NoProfileError
from .families import Family
from .profiles import PIXEL_GRID, Profile, Range, UnetCall, tokens_for_context
from .store import EngineEntry


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


def plan(entries: Sequence[EngineEntry], calls: Sequence[UnetCall], family: Family,
         checkpoint: str, controlnet: bool = False) -> dict[UnetCall, Choice]:
    """A choice for every call of a job; :class:`NoProfileError` that says what is missing otherwise."""
    if controlnet:
        if not any(e.controlnet for e in entries):
            raise NoProfileError(no_controlnet_engine(checkpoint))
        entries = [e for e in entries if e.controlnet]
    chosen: dict[UnetCall, Choice] = {}
    uncovered = []
    for call in calls:
        choice = choose(entries, call)
        if choice is None:
            uncovered.append(call)
        else:
            chosen[call] = choice
    if uncovered:
        raise NoProfileError(explain(entries, uncovered, calls, family, checkpoint))
    return chosen


def no_controlnet_engine(checkpoint: str) -> str:
    return (f"ControlNet is on for this job, but no TensorRT engine of {checkpoint} is ControlNet-ready. Build one "
            "with \"ControlNet-ready\" ticked in the TensorRT tab (API: \"controlnet\": true), or choose None for SD "
            "Unet for ControlNet jobs.")


def explain(entries: Sequence[EngineEntry], uncovered: Sequence[UnetCall], calls: Sequence[UnetCall],
            family: Family, checkpoint: str) -> str:
    """The user-facing message for a job no engine covers: what is out, by how much, and what to build."""
    lines = [f"No TensorRT engine for {checkpoint} covers this generation."]
    for call in uncovered:
        nearest = _nearest(entries, call)
        if nearest is None:
            lines.append(f"- needed: {call}.")
        else:
            entry, profile = nearest
            lines.append(f"- needed: {call}; nearest engine {entry.id} ({profile.label()}): "
                         + "; ".join(profile.misses(call)) + ".")
    if entries:
        lines.append("Engines for this checkpoint: " + "; ".join(f"{e.id} ({e.label()})" for e in entries) + ".")
    else:
        lines.append("There is no engine for this checkpoint yet.")
    lines.append(suggestion(calls, family))
    return "\n".join(lines)


def suggestion(calls: Sequence[UnetCall], family: Family) -> str:
    """Name a preset that covers every call, or the custom profile to build."""
    off_grid = [c for c in calls if c.latent_height % (PIXEL_GRID // 8) or c.latent_width % (PIXEL_GRID // 8)]
    if off_grid:
        c = off_grid[0]
        return (f"{c.width}x{c.height} px is not on the {PIXEL_GRID} px grid engines use: choose a size (or hires "
                f"upscale factor) that gives multiples of {PIXEL_GRID}, or use the PyTorch UNet for this job.")
    for preset in family.presets:
        if all(preset.profile.covers(c) for c in calls):
            return f"Build the preset \"{preset.label}\" ({preset.name}) in the TensorRT tab."
    needed = covering_profile(calls)
    problems = needed.problems(family)
    if problems:
        return "No engine can cover this job: " + "; ".join(problems) + ". Use the PyTorch UNet for it."
    return (f"Build a custom profile in the TensorRT tab: batch {needed.batch}, width {needed.width}, "
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
