"""Model families (SD 1.x, SD 2.x, SDXL, ...) read from the data files in ``models/families``.

A family says how to recognise a UNet, what its engine inputs look like and which profiles to offer.
Adding a family is adding a JSON file; nothing here names a family.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from ..errors import FamilyError
from .profiles import LATENT_SCALE, Profile

FAMILIES_DIR = Path(__file__).resolve().parents[2] / "models" / "families"

CONTROL_PREFIX = "control_"
"""ControlNet-ready engines take residual ``i`` as input ``control_<i>``."""


@dataclass(frozen=True)
class UnetTraits:
    """What identifies a UNet's family: read off its weights (and the checkpoint's prediction type)."""

    in_channels: int
    context_dim: int
    adm_dim: int | None = None
    prediction: str = "eps"


@dataclass(frozen=True)
class ResidualPoint:
    """One place where ControlNet adds a residual: a skip connection of ``channels`` channels whose height and
    width are the latent's divided by ``downscale``."""

    channels: int
    downscale: int

    @classmethod
    def parse(cls, value: Any) -> ResidualPoint:
        channels, downscale = value
        if not all(isinstance(v, int) and v > 0 for v in (channels, downscale)) or downscale & (downscale - 1):
            raise ValueError(f"a ControlNet residual is [channels, downscale] with a power-of-two downscale, "
                             f"got {value!r}")
        return cls(channels, downscale)


def control_names(count: int) -> tuple[str, ...]:
    return tuple(f"{CONTROL_PREFIX}{i}" for i in range(count))


@dataclass(frozen=True)
class Preset:
    """A named profile offered in the tab and the API."""

    name: str
    label: str
    profile: Profile
    default: bool = False


@dataclass(frozen=True)
class Family:
    """One model family as described by its data file."""

    name: str
    label: str
    notes: str
    traits: UnetTraits
    out_channels: int
    limits: Mapping[str, int]
    memory: Mapping[str, float]
    inputs: Mapping[str, tuple[str, ...]]
    outputs: Mapping[str, tuple[str, ...]]
    presets: tuple[Preset, ...] = field(default_factory=tuple)
    attention_upcast: bool = False
    """fp16 engines compute attention scores in fp32 (SD 2.x: its logits overflow fp16, giving black images)."""
    controlnet_points: tuple[ResidualPoint, ...] = ()
    """Where the released UNets of this family take ControlNet residuals, in ControlNet's order."""
    controlnet_unsupported: str = ""
    """Why this family cannot take ControlNet residuals (then ``controlnet_points`` is empty)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Family:
        match = data["match"]
        return cls(
            name=data["name"], label=data["label"], notes=data.get("notes", ""),
            traits=UnetTraits(match["in_channels"], match["context_dim"], match.get("adm_dim"),
                              match.get("prediction", "eps")),
            out_channels=data["out_channels"], limits=data["limits"], memory=data["memory"],
            inputs={k: tuple(v) for k, v in data["inputs"].items()},
            outputs={k: tuple(v) for k, v in data["outputs"].items()},
            presets=tuple(Preset(p["name"], p["label"], Profile.from_dict(p), bool(p.get("default")))
                          for p in data["presets"]),
            attention_upcast=bool(data.get("attention_upcast", False)),
            controlnet_points=tuple(ResidualPoint.parse(v) for v in data.get("controlnet", {}).get("residuals", ())),
            controlnet_unsupported=data.get("controlnet", {}).get(
                "unsupported", "" if "controlnet" in data else "its family file describes no ControlNet residuals"),
        )

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    @property
    def output_name(self) -> str:
        return next(iter(self.outputs))

    @property
    def default_preset(self) -> Preset:
        return next((p for p in self.presets if p.default), self.presets[0])

    def preset(self, name: str) -> Preset:
        for p in self.presets:
            if p.name == name:
                return p
        raise FamilyError(f"{self.label} has no preset {name!r}; presets: {', '.join(p.name for p in self.presets)}")

    def constants(self) -> dict[str, int]:
        """Values of the symbolic dims that do not depend on the profile."""
        consts = {"in_channels": self.traits.in_channels, "out_channels": self.out_channels,
                  "context_dim": self.traits.context_dim}
        if self.traits.adm_dim:
            consts["adm_dim"] = self.traits.adm_dim
        return consts

    def engine_input_names(self, controlnet: Sequence[ResidualPoint] = ()) -> tuple[str, ...]:
        """The engine's inputs: the family's, then one per ControlNet residual of a ControlNet-ready engine."""
        return self.input_names + control_names(len(controlnet))

    def controlnet_residuals(self, unet: torch.nn.Module) -> tuple[ResidualPoint, ...]:
        """The residual points of ``unet`` for a ControlNet-ready export; a clear error where the family has none."""
        if not self.controlnet_points:
            raise FamilyError(f"{self.label} engines cannot take ControlNet: {self.controlnet_unsupported}")
        return unet_residual_points(unet)

    def engine_shapes(self, profile: Profile, controlnet: Sequence[ResidualPoint] = ()
                      ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Input name -> (min, opt, max) shapes, as a TensorRT optimisation profile wants them; residuals of a
        ControlNet-ready engine follow the profile's rows and latent size, scaled down per point."""
        dims = {k: (v, v, v) for k, v in self.constants().items()}
        dims.update(profile.engine_dims())
        shapes = {name: tuple(tuple(dims[d][i] for d in symbols) for i in range(3))
                  for name, symbols in self.inputs.items()}
        for name, point in zip(control_names(len(controlnet)), controlnet):
            shapes[name] = tuple((dims["batch"][i], point.channels, dims["latent_height"][i] // point.downscale,
                                  dims["latent_width"][i] // point.downscale) for i in range(3))
        return shapes  # type: ignore[return-value]

    def dynamic_axes(self, controlnet: Sequence[ResidualPoint] = ()) -> dict[str, dict[int, str]]:
        """ONNX dynamic axes: every symbolic dim that a profile may vary."""
        varying = set(Profile.static(1, 64, 64).engine_dims())
        axes = {name: {i: s for i, s in enumerate(symbols) if s in varying}
                for name, symbols in {**self.inputs, **self.outputs}.items()}
        for name, point in zip(control_names(len(controlnet)), controlnet):
            axes[name] = {0: "batch", 2: f"latent_height_{point.downscale}", 3: f"latent_width_{point.downscale}"}
        return axes

    def example_inputs(self, batch: int, height: int, width: int, context_len: int, *,
                       dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                       seed: int = 0, controlnet: Sequence[ResidualPoint] = ()) -> dict[str, torch.Tensor]:
        """Random inputs of the given shape, as the WebUI would pass them (timesteps fractional in [0, 999]),
        with random residuals for a ControlNet-ready engine's ``controlnet`` points."""
        gen = torch.Generator().manual_seed(seed)
        consts = self.constants()
        dims = {**consts, "batch": batch, "latent_height": height // LATENT_SCALE,
                "latent_width": width // LATENT_SCALE, "context_len": context_len}
        out: dict[str, torch.Tensor] = {}
        for name, symbols in self.inputs.items():
            shape = [dims[s] for s in symbols]
            if name == "timesteps":
                out[name] = torch.rand(shape, generator=gen) * 999
            else:
                out[name] = torch.randn(shape, generator=gen)
            out[name] = out[name].to(device=device, dtype=dtype)
        latent = (dims["latent_height"], dims["latent_width"])
        for name, point in zip(control_names(len(controlnet)), controlnet):
            shape = (batch, point.channels, *(side // point.downscale for side in latent))
            out[name] = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
        return out

    def limit_problems(self, profile: Profile) -> list[str]:
        """Why a syntactically valid profile is too large for this family, with a memory estimate."""
        lim = self.limits
        found = []
        if profile.tokens.max > lim["max_tokens"]:
            found.append(f"tokens: {profile.tokens.max} is over {self.label}'s limit of {lim['max_tokens']}")
        for side in ("height", "width"):
            r = getattr(profile, side)
            if r.max > lim["max_size"] or r.min < lim["min_size"]:
                found.append(f"{side}: {r.min}-{r.max} px is outside {self.label}'s "
                             f"{lim['min_size']}-{lim['max_size']} px")
        if profile.batch.max > lim["max_batch"]:
            found.append(f"batch: {profile.batch.max} is over {self.label}'s limit of {lim['max_batch']}")
        if found and (profile.height.max > lim["max_size"] or profile.width.max > lim["max_size"]
                      or profile.batch.max > lim["max_batch"]):
            estimate = self.memory_estimate_gb(profile)
            found.append(f"an engine this large would need about {estimate:.0f} GB of GPU memory")
        return found

    def memory_estimate_gb(self, profile: Profile) -> float:
        """Rough GPU memory for running the largest shape of ``profile``: weights plus activations."""
        latent_px = (profile.height.max // LATENT_SCALE) * (profile.width.max // LATENT_SCALE)
        rows = 2 * profile.batch.max
        return self.memory["weights_gb"] + rows * latent_px * self.memory["activation_kb_per_latent_px"] / 2**20


@cache
def _load(folder: str) -> dict[str, Family]:
    families = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            fam = Family.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as e:
            raise FamilyError(f"family file {path.name} is malformed: {e}") from e
        families[fam.name] = fam
    return families


def load_families(folder: Path = FAMILIES_DIR) -> dict[str, Family]:
    """All families in ``folder`` by name (read once)."""
    return dict(_load(str(folder)))


def get_family(name: str, folder: Path = FAMILIES_DIR) -> Family:
    families = _load(str(folder))
    if name not in families:
        raise FamilyError(f"unknown model family {name!r}; known: {', '.join(families)}")
    return families[name]


def detect_family(traits: UnetTraits, folder: Path = FAMILIES_DIR) -> Family:
    """The family whose data file matches ``traits``; a clear error naming what was seen otherwise."""
    for fam in _load(str(folder)).values():
        if fam.traits == traits:
            return fam
    raise FamilyError(
        f"no model family matches this UNet (in_channels={traits.in_channels}, context_dim={traits.context_dim}, "
        f"y width={traits.adm_dim}, prediction={traits.prediction}); supported: "
        + ", ".join(f.label for f in _load(str(folder)).values()))


# Weight names that carry the traits, in the WebUI's (ldm/sgm) layout and in diffusers' layout.
_FIRST_CONV = ("input_blocks.0.0.weight", "conv_in.weight")
_ADM = ("label_emb.0.0.weight", "class_embedding.linear_1.weight", "add_embedding.linear_1.weight")
_CONTEXT_SUFFIX = "attn2.to_k.weight"


def residual_points(channels: Sequence[int], layers: Sequence[int]) -> tuple[ResidualPoint, ...]:
    """The skip connections of a UNet with these level widths and res-blocks per level, in ControlNet's order:
    the input conv, each level's res-blocks and (but the last level's) downsampler, then the middle block."""
    points = [ResidualPoint(channels[0], 1)]
    for level, (width, count) in enumerate(zip(channels, layers)):
        points += [ResidualPoint(width, 2**level)] * count
        if level < len(channels) - 1:
            points.append(ResidualPoint(width, 2 ** (level + 1)))
    return (*points, ResidualPoint(channels[-1], 2 ** (len(channels) - 1)))


def unet_residual_points(unet: torch.nn.Module) -> tuple[ResidualPoint, ...]:
    """The residual points of ``unet``, read off its configuration (ldm/sgm ``UNetModel`` or diffusers)."""
    if hasattr(unet, "input_blocks"):  # ldm / sgm: model_channels x channel_mult, num_res_blocks per level
        channels = [unet.model_channels * m for m in unet.channel_mult]
        layers = unet.num_res_blocks
    elif "block_out_channels" in getattr(unet, "config", {}):
        channels, layers = list(unet.config.block_out_channels), unet.config.layers_per_block
    else:
        raise FamilyError(f"cannot find the skip connections of a {type(unet).__name__} for ControlNet")
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    return residual_points(channels, layers)


def unet_traits(unet: torch.nn.Module, prediction: str | None = None) -> UnetTraits:
    """Read in-channels, context width and ``y`` width off a UNet's weights (ldm, sgm or diffusers layout).

    The weights cannot tell eps from v prediction: pass ``prediction`` (the WebUI knows it from the checkpoint's
    config); otherwise the module's ``prediction_type`` attribute is used if it has one, else ``eps``.
    """
    prediction = prediction or getattr(unet, "prediction_type", "eps")
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}

    def first(keys: tuple[str, ...]) -> tuple[int, ...] | None:
        return next((shapes[k] for k in keys if k in shapes), None)

    conv = first(_FIRST_CONV)
    ctx = next((s for k, s in shapes.items() if k.endswith(_CONTEXT_SUFFIX)), None)
    if conv is None or ctx is None:
        raise FamilyError("this does not look like a Stable Diffusion UNet (no input conv or cross-attention found)")
    adm = first(_ADM)
    return UnetTraits(conv[1], ctx[1], adm[1] if adm else None, prediction)
