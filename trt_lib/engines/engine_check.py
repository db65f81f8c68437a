"""Check an engine against the PyTorch UNet it was built from: same seeded inputs, compare the outputs.

Shapes: per profile its min, opt and max shapes, and the opt size with the longest prompt when that is not
already among them (so the largest context the engine takes is run at a common size too).

Metric, per shape: ``max |engine - pytorch| / max |pytorch|``, the worst absolute difference relative to the
reference output's peak. Relative to the peak rather than element by element, because UNet outputs cross
zero everywhere and element-wise relative errors explode there; the worst element rather than a mean,
because a defect confined to one block, one batch row or one region (a corrupted weight, a wrong profile)
must show at full size instead of being averaged away. NaN and inf are counted apart and fail the check.

Tolerance (:data:`TOLERANCES`): fp16 keeps 11 significant bits (unit roundoff 4.9e-4), and through a UNet's
layers, with an engine fusing and ordering its sums otherwise than PyTorch, that grows. Measured here on the
tiny UNets (fp16 ONNX on ONNX Runtime's CPU provider against the fp32 PyTorch UNet, SD 1.x, 2.x and XL,
1-4 rows, 64-128 px, 77-154 context rows): 2e-3 to 6e-3. 2e-2 leaves room for deeper real-size UNets and
still fails what is wrong: other weights give differences of the order of the output (the output layer 20%
off: 0.2; a replaced checkpoint: about 1). fp32 on both sides agrees to about 1e-6 (tiny UNets), so 1e-3
there: one convolution 10% off already gives 9e-3 to 2e-2 (tests/test_engine_check.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..model.families import Family
from ..model.profiles import LATENT_SCALE, Profile, tokens_for_context

Feeds = Mapping[str, torch.Tensor]
UnetFn = Callable[[Feeds], torch.Tensor]
Progress = Callable[[float, str], None]

TOLERANCES = {"float16": 2e-2, "float32": 1e-3}
METRIC = "max |engine - PyTorch| / max |PyTorch| per shape"


@dataclass(frozen=True)
class CheckShape:
    """One shape the check runs: engine rows, pixel size, context rows, and where in which profile it lies."""

    label: str
    profile: int
    rows: int
    height: int
    width: int
    context_len: int

    def describe(self) -> str:
        return (f"profile {self.profile + 1} {self.label}: {self.rows} rows, {self.width}x{self.height} px, "
                f"{tokens_for_context(self.context_len)} tokens")


def check_shapes(profiles: Sequence[Profile]) -> list[CheckShape]:
    """min, opt, max of every profile, plus opt with the longest prompt; a shape met twice is run once."""
    found: dict[tuple, CheckShape] = {}
    for index, profile in enumerate(profiles):
        dims = profile.engine_dims()
        points = [(label, {k: v[i] for k, v in dims.items()}) for i, label in enumerate(("min", "opt", "max"))]
        points.append(("opt, longest prompt", {**points[1][1], "context_len": dims["context_len"][2]}))
        for label, d in points:
            key = (d["batch"], d["latent_height"], d["latent_width"], d["context_len"])
            if key in found:
                continue
            found[key] = CheckShape(label, index, d["batch"], d["latent_height"] * LATENT_SCALE,
                                    d["latent_width"] * LATENT_SCALE, d["context_len"])
    return list(found.values())


@dataclass
class ShapeResult:
    """The comparison at one shape."""

    shape: str
    relative_error: float
    """:data:`METRIC` over the elements finite on both sides."""
    engine_nonfinite: int
    pytorch_nonfinite: int
    passed: bool


def compare(engine: torch.Tensor, reference: torch.Tensor, tolerance: float, shape: str) -> ShapeResult:
    """:data:`METRIC` of ``engine`` against ``reference``, with the NaN/inf counts of each."""
    a, b = engine.detach().float().cpu(), reference.detach().float().cpu()
    if a.shape != b.shape:
        raise ValueError(f"engine output {list(a.shape)} and PyTorch output {list(b.shape)} differ in shape")
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    both = fa & fb
    peak = b[fb].abs().max().item() if fb.any() else 0.0
    diff = (a - b)[both].abs().max().item() if both.any() else 0.0
    error = diff / peak if peak > 0 else (0.0 if diff == 0 else float("inf"))
    bad_a, bad_b = int((~fa).sum()), int((~fb).sum())
    return ShapeResult(shape, error, bad_a, bad_b, not bad_a and not bad_b and error <= tolerance)


@dataclass
class CheckReport:
    """What a check found, as recorded in the engine's manifest entry and shown in the engine list."""

    passed: bool
    tolerance: float
    runtime: str
    reference: str
    seed: int
    seconds: float
    checked: str
    shapes: list[ShapeResult] = field(default_factory=list)
    advice: str = ""
    metric: str = METRIC

    @property
    def worst(self) -> ShapeResult:
        return max(self.shapes, key=lambda s: (s.engine_nonfinite + s.pytorch_nonfinite > 0, s.relative_error))

    def summary(self) -> str:
        """One line for the engine list."""
        worst = self.worst
        figures = f"max relative error {worst.relative_error:.2g} (tolerance {self.tolerance:g})"
        if self.passed:
            return f"check passed {self.checked[:10]}: {figures}, {len(self.shapes)} shapes, {self.runtime}"
        where = worst.shape.split(":")[0]
        nonfinite = worst.engine_nonfinite + worst.pytorch_nonfinite
        return f"CHECK FAILED at {where}: {figures}" + (f", {nonfinite} NaN/inf" if nonfinite else "")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckReport:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["shapes"] = [ShapeResult(**s) for s in data.get("shapes", [])]
        return cls(**values)


def advice(results: Sequence[ShapeResult]) -> str:
    """What to do about a failed check, from what failed."""
    if any(r.pytorch_nonfinite for r in results):
        return ("The PyTorch UNet itself gives NaN/inf at some shapes (fp16 overflow), so those shapes say nothing "
                "about the engine: turn on Settings → Stable Diffusion → 'Upcast cross attention layer to "
                "float32' (or start the WebUI with --no-half) and check again.")
    if any(r.engine_nonfinite for r in results):
        return ("The engine gives NaN/inf where the PyTorch UNet does not (fp16 overflow in the engine: black or "
                "noisy images). Delete it and build it again with this extension; if a fresh engine fails too, "
                "use None for SD Unet with this checkpoint.")
    return ("The engine computes something else than the loaded checkpoint's UNet: it was built from other weights "
            "(a checkpoint file replaced under the same name, LoRAs that were merged when it was exported) or its "
            "build went wrong. Delete it and build it again with this checkpoint loaded (and no LoRA in use); "
            "until then choose None for SD Unet.")


def tolerance_for(*dtypes: str) -> float:
    """The loosest tolerance of the dtypes involved (engine's, PyTorch UNet's)."""
    return max(TOLERANCES.get(d, TOLERANCES["float16"]) for d in dtypes)


def check_engine(run_engine: UnetFn, pytorch: Callable[[], AbstractContextManager[UnetFn]], family: Family,
                 profiles: Sequence[Profile], *, dtype: torch.dtype, device: torch.device | str,
                 tolerance: float, runtime: str, reference: str, seed: int = 0,
                 engine_scope: Callable[[], AbstractContextManager[Any]] = nullcontext,
                 progress: Progress | None = None) -> CheckReport:
    """Run seeded random inputs at :func:`check_shapes` through the PyTorch UNet, then the engine, and compare.

    ``pytorch()`` gives the reference UNet for the time it is entered (the caller holds what it must there:
    the WebUI's queue lock, the UNet on the GPU, baked LoRAs merged) and ``engine_scope()`` what the engine
    runs under; the inputs are made once, so both see the very same tensors.
    """
    started = time.perf_counter()
    shapes = check_shapes(profiles)
    inputs = [family.example_inputs(s.rows, s.height, s.width, s.context_len, dtype=dtype, device=device,
                                    seed=seed + i) for i, s in enumerate(shapes)]
    say = progress or (lambda fraction, text: None)
    steps = 2 * len(shapes)
    references = []
    with torch.no_grad(), pytorch() as unet:
        for i, (shape, feeds) in enumerate(zip(shapes, inputs)):
            say(i / steps, f"PyTorch UNet at {shape.describe()}")
            references.append(unet(feeds).detach().float().cpu())
    results = []
    with torch.no_grad(), engine_scope():
        for i, (shape, feeds, ref) in enumerate(zip(shapes, inputs, references)):
            say((len(shapes) + i) / steps, f"engine at {shape.describe()}")
            results.append(compare(run_engine(feeds), ref, tolerance, shape.describe()))
    passed = all(r.passed for r in results)
    return CheckReport(passed, tolerance, runtime, reference, seed, round(time.perf_counter() - started, 3),
                       time.strftime("%Y-%m-%dT%H:%M:%S%z"), results, "" if passed else advice(results))
