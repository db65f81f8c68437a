"""Model families (SD 1.x, SD 2.x, SDXL, ...) read from the data files in ``models/families``.

A family says how to recognise a UNet, what its engine inputs look like and which profiles to offer.
Adding a family is adding a JSON file; nothing here names a family.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from .errors import FamilyError
from .profiles import LATENT_SCALE, Profile

FAMILIES_DIR = Path(__file__).resolve().parent.parent / "models" / "families"


@dataclass(frozen=True)
class UnetTraits:
    """What identifies a UNet's family: read off its weights (and the checkpoint's prediction type)."""

    in_channels: int
    context_dim: int
    adm_dim: int | None = None
    prediction: str = "eps"


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

    def engine_shapes(self, profile: Profile) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Input name -> (min, opt, max) shapes, as a TensorRT optimisation profile wants them."""
        dims = {k: (v, v, v) for k, v in self.constants().items()}
        dims.update(profile.engine_dims())
        return {name: tuple(tuple(dims[d][i] for d in symbols) for i in range(3))  # type: ignore[misc]
                for name, symbols in self.inputs.items()}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX dynamic axes: every symbolic dim that a profile may vary."""
        varying = set(Profile.static(1, 64, 64).engine_dims())
        return {name: {i: s for i, s in enumerate(symbols) if s in varying}
                for name, symbols in {**self.inputs, **self.outputs}.items()}

    def example_inputs(self, batch: int, height: int, width: int, context_len: int, *,
                       dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                       seed: int = 0) -> dict[str, torch.Tensor]:
        """Random inputs of the given shape, as the WebUI would pass them (timesteps fractional in [0, 999])."""
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
