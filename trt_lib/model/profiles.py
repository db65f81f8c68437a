"""Shape profiles: the range of batch sizes, image sizes and prompt lengths an engine accepts.

A profile is written in the user's terms (images per batch, pixels, prompt tokens) and turned into engine
input shapes here, so that the rest of the extension never does that arithmetic itself.

Why the 64-pixel grid: the UNet halves the latent three times (pixels / 8 / 2 / 2 / 2) and concatenates
each up-sampled feature map with its skip connection. That only lines up when the latent side is a
multiple of 8, i.e. the image side a multiple of 64. The WebUI's PyTorch path patches mismatches by
interpolating (sd_hijack_unet's ``cat``), which an exported graph with dynamic sizes cannot reproduce, so
an engine accepts sizes on the 64 px grid only and anything else is rejected with a clear message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ProfileError

if TYPE_CHECKING:
    from .families import Family
    from .job_shapes import CallSource

PIXEL_GRID = 64
"""Image sides must be multiples of this (see the module docstring)."""

LATENT_SCALE = 8
"""The VAE maps 8x8 pixels to one latent pixel."""

TOKENS_PER_CHUNK = 75
"""The WebUI encodes prompts in chunks of 75 tokens ..."""

CONTEXT_PER_CHUNK = 77
"""... each of which becomes 77 context rows (start and end token added)."""

DIMENSIONS = ("batch", "height", "width", "tokens")

PROMPT, NEGATIVE = "prompt", "negative prompt"
"""The two kinds of rows of a UNet call, as messages name them."""


def context_len(tokens: int) -> int:
    """Context rows the WebUI produces for a prompt padded to ``tokens`` (a multiple of 75)."""
    return tokens // TOKENS_PER_CHUNK * CONTEXT_PER_CHUNK


def tokens_for_context(rows: int) -> int:
    """Inverse of :func:`context_len`: the prompt tokens that give ``rows`` context rows."""
    return rows // CONTEXT_PER_CHUNK * TOKENS_PER_CHUNK


@dataclass(frozen=True)
class Range:
    """An inclusive range with the value the engine is tuned for."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, value: Any, name: str) -> Range:
        """Accept ``n``, ``[min, opt, max]`` or ``{"min":, "opt":, "max":}``; reject anything else clearly."""
        if isinstance(value, Mapping):
            value = [value.get("min"), value.get("opt"), value.get("max")]
        if isinstance(value, bool):
            raise ProfileError(f"{name}: expected a whole number or [min, opt, max], got {value!r}")
        if isinstance(value, int):
            value = [value, value, value]
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ProfileError(f"{name}: expected a whole number or [min, opt, max], got {value!r}")
        parsed = []
        for part in value:
            if isinstance(part, bool) or not isinstance(part, (int, float)) or int(part) != part:
                raise ProfileError(f"{name}: {part!r} is not a whole number")
            parsed.append(int(part))
        return cls(*parsed)

    @property
    def is_static(self) -> bool:
        return self.min == self.max

    def contains(self, value: int) -> bool:
        return self.min <= value <= self.max

    def as_list(self) -> list[int]:
        return [self.min, self.opt, self.max]

    def __str__(self) -> str:
        return str(self.min) if self.is_static else f"{self.min}-{self.max}"


@dataclass(frozen=True)
class UnetCall:
    """The shape of one UNet call: engine batch (cond and uncond rows counted), latent size, context rows."""

    batch: int
    latent_height: int
    latent_width: int
    context_len: int

    @property
    def height(self) -> int:
        return self.latent_height * LATENT_SCALE

    @property
    def width(self) -> int:
        return self.latent_width * LATENT_SCALE

    @property
    def tokens(self) -> int:
        return tokens_for_context(self.context_len)

    @classmethod
    def from_inputs(cls, sample_shape: Iterable[int], context_shape: Iterable[int]) -> UnetCall:
        """Build from the shapes of ``x`` [B, C, h, w] and ``context`` [B, 77k, ctx] as the WebUI passes them."""
        batch, _, h, w = sample_shape
        return cls(int(batch), int(h), int(w), int(list(context_shape)[1]))

    def describe(self, source: CallSource | None = None) -> str:
        """The call in the user's terms: pass, size, batch size (images) and prompt tokens."""
        if source is None:
            return (f"{self.width}x{self.height} px, {rows_text(self.batch)}, prompt or negative prompt "
                    f"of {self.tokens} tokens")
        passes = " and ".join(sorted(source.passes))
        return (f"{passes + ' ' if passes else ''}{self.width}x{self.height} px, batch size {source.images}, "
                f"{prompts_text(source)} of {self.tokens} tokens")


def rows_text(rows: int) -> str:
    """Engine rows, explained for a user who thinks in images."""
    return f"{rows} rows at once (a row per image for the prompt and another for the negative prompt)"


def prompts_text(source: CallSource) -> str:
    """"prompt", "negative prompt" or "prompt and negative prompt", with its AND parts."""
    text = " and ".join(p for p in (PROMPT, NEGATIVE) if p in source.prompts)
    if PROMPT in source.prompts and source.and_parts > 1:
        text += f" ({source.and_parts} AND-joined parts)"
    return text


@dataclass(frozen=True)
class Profile:
    """Ranges of images per batch, pixel height and width, and prompt tokens that one engine profile accepts.

    ``batch`` counts images as the user sets "Batch size"; the engine's batch dimension spans
    ``batch.min`` (calls that carry only cond or only uncond) to ``2 * batch.max`` (cond and uncond together,
    as classifier-free guidance sends them).
    """

    batch: Range
    height: Range
    width: Range
    tokens: Range

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """Parse ``{"batch": [1, 1, 4], "height": ..., "width": ..., "tokens": ...}`` (clear error if malformed)."""
        if not isinstance(data, Mapping):
            raise ProfileError(f"a profile must be an object with {', '.join(DIMENSIONS)}; got {type(data).__name__}")
        missing = [d for d in DIMENSIONS if d not in data]
        if missing:
            raise ProfileError(f"profile is missing {', '.join(missing)} (each a number or [min, opt, max])")
        return cls(**{d: Range.parse(data[d], d) for d in DIMENSIONS})

    @classmethod
    def static(cls, batch: int, height: int, width: int, tokens: int = TOKENS_PER_CHUNK) -> Profile:
        """A profile that accepts exactly one size: the fastest engines."""
        return cls(Range(batch, batch, batch), Range(height, height, height), Range(width, width, width),
                   Range(tokens, tokens, tokens))

    def to_dict(self) -> dict[str, list[int]]:
        return {d: getattr(self, d).as_list() for d in DIMENSIONS}

    @property
    def is_static(self) -> bool:
        return all(getattr(self, d).is_static for d in DIMENSIONS)

    def label(self) -> str:
        """Short text for lists and dropdowns, e.g. ``512-768x512-768 b1-4 t75-150``."""
        return f"{self.width}x{self.height} b{self.batch} t{self.tokens}"

    def problems(self, family: Family | None = None) -> list[str]:
        """Every reason this profile cannot be built, as sentences; empty when it is valid."""
        found = []
        for name in DIMENSIONS:
            r: Range = getattr(self, name)
            if r.min <= 0:
                found.append(f"{name}: min must be at least 1 (got {r.min})")
            if not r.min <= r.opt <= r.max:
                found.append(f"{name}: needs min <= opt <= max (got {r.min}, {r.opt}, {r.max})")
        for name in ("height", "width"):
            off = sorted({v for v in getattr(self, name).as_list() if v % PIXEL_GRID})
            if off:
                fixed = ", ".join(f"{v} -> {_nearest(v, PIXEL_GRID)}" for v in off)
                found.append(f"{name}: sizes must be multiples of {PIXEL_GRID} px ({fixed})")
        off = sorted({v for v in self.tokens.as_list() if v % TOKENS_PER_CHUNK})
        if off:
            fixed = ", ".join(f"{v} -> {max(TOKENS_PER_CHUNK, _ceil_to(v, TOKENS_PER_CHUNK))}" for v in off)
            found.append(f"tokens: prompt tokens come in chunks of {TOKENS_PER_CHUNK} ({fixed})")
        if family is not None:
            found.extend(family.limit_problems(self))
        return found

    def validate(self, family: Family | None = None) -> Profile:
        """Raise :class:`ProfileError` naming every problem at once; return self when valid."""
        found = self.problems(family)
        if found:
            raise ProfileError("invalid profile: " + "; ".join(found))
        return self

    def engine_dims(self) -> dict[str, tuple[int, int, int]]:
        """Symbolic engine dimensions (as used in the family files) -> (min, opt, max)."""
        return {
            "batch": (self.batch.min, 2 * self.batch.opt, 2 * self.batch.max),
            "latent_height": tuple(v // LATENT_SCALE for v in self.height.as_list()),
            "latent_width": tuple(v // LATENT_SCALE for v in self.width.as_list()),
            "context_len": tuple(context_len(v) for v in self.tokens.as_list()),
        }

    def misses(self, call: UnetCall, source: CallSource | None = None) -> list[str]:
        """What of ``call`` lies outside this profile, each with by how much, in the user's terms (batch size
        in images, which prompt needs the tokens) where ``source`` says what of the job the call carries;
        empty when covered."""
        found = []
        batch = self._batch_miss(call, source)
        if batch:
            found.append(batch)
        for name, value, r in (("height", call.height, self.height), ("width", call.width, self.width)):
            if not r.contains(value):
                found.append(f"{name} {value} px is {_beyond(value, r, ' px')}")
        if not self.tokens.contains(call.tokens):
            who = f"the {prompts_text(source)}" if source else "the prompt or negative prompt"
            found.append(f"{who} needs {call.tokens} tokens, {_beyond(call.tokens, self.tokens)}")
        for name, latent in (("height", call.latent_height), ("width", call.latent_width)):
            if latent % (PIXEL_GRID // LATENT_SCALE):
                found.append(f"{name} {latent * LATENT_SCALE} px is off the {PIXEL_GRID} px grid engines need")
        if call.context_len % CONTEXT_PER_CHUNK:
            found.append(f"a context of {call.context_len} rows is not whole prompt chunks of {CONTEXT_PER_CHUNK}")
        return found

    def _batch_miss(self, call: UnetCall, source: CallSource | None) -> str:
        """The engine takes ``batch.min`` to ``2 * batch.max`` rows: say so in images where that is exact."""
        lo, hi = self.batch.min, 2 * self.batch.max
        if lo <= call.batch <= hi:
            return ""
        if source is not None and len(source.prompts) == 2 and source.and_parts == 1 and call.batch > hi:
            return f"batch size {source.images} is {_beyond(source.images, self.batch)}"
        if source is not None and len(source.prompts) == 1 and call.batch < lo:
            return f"batch size {source.images} is {_beyond(source.images, self.batch)}"
        sends = f"batch size {source.images} sends the {prompts_text(source)} as {call.batch} rows" if source \
            else f"{rows_text(call.batch)} are sent"
        return (f"{sends}, but the engine (batch size {self.batch}) takes {lo}-{hi} rows: two per image, "
                "one for the prompt and one for the negative prompt")

    def covers(self, call: UnetCall) -> bool:
        return not self.misses(call)

    def spread(self) -> int:
        """How wide the profile is; narrower profiles run faster, so matching prefers them."""
        dims = self.engine_dims()
        return 1 + sum((hi - lo) * weight for (lo, _, hi), weight in
                       zip(dims.values(), (64, 1, 1, 1)))


def _beyond(value: int, r: Range, unit: str = "") -> str:
    """"256 px over the engine's maximum of 768 px" (or under its minimum)."""
    if value > r.max:
        return f"{value - r.max}{unit} over the engine's maximum of {r.max}{unit}"
    return f"{r.min - value}{unit} under the engine's minimum of {r.min}{unit}"


def _nearest(value: int, step: int) -> int:
    return max(step, round(value / step) * step)


def _ceil_to(value: int, step: int) -> int:
    return -(-value // step) * step
