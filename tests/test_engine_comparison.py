"""The engine check's comparison on real tiny UNets and their real ONNX exports run by ONNX Runtime: a good
export passes, one with a changed weight fails, NaN is found; shapes and metric."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

from trt_lib.engines.engine_check import TOLERANCES, check_engine, check_shapes, compare, tolerance_for
from trt_lib.engines.onnx_runtime import OnnxRuntimeRunner
from trt_lib.model.families import get_family
from trt_lib.model.profiles import Profile

DYNAMIC = Profile.from_dict({"batch": [1, 1, 2], "height": [64, 64, 128], "width": [64, 128, 128],
                             "tokens": [75, 75, 150]})


def check(unet, onnx, family_name: str, profile: Profile = DYNAMIC, seed: int = 0):
    family = get_family(family_name)
    runner = OnnxRuntimeRunner(onnx, family.input_names, family.output_name, [family.engine_shapes(profile)])
    names = family.input_names

    @contextmanager
    def pytorch():
        yield lambda feeds: unet(*(feeds[n] for n in names[:3]), y=feeds.get("y"))

    return check_engine(runner, pytorch, family, [profile], dtype=torch.float32, device="cpu",
                        tolerance=TOLERANCES["float32"], runtime=runner.runtime_name, reference="tiny UNet",
                        seed=seed)


def test_shapes_are_min_opt_max_and_the_longest_prompt_each_once():
    shapes = check_shapes([DYNAMIC, Profile.static(1, 64, 64)])
    got = [(s.label, s.profile, s.rows, s.height, s.width, s.context_len) for s in shapes]
    assert got == [("min", 0, 1, 64, 64, 77), ("opt", 0, 2, 64, 128, 77), ("max", 0, 4, 128, 128, 154),
                   ("opt, longest prompt", 0, 2, 64, 128, 154),
                   ("opt", 1, 2, 64, 64, 77)]  # static, 1 image: 1 row (no CFG, as the first profile's min) or 2


def test_metric_is_the_worst_difference_relative_to_the_reference_peak():
    reference = torch.tensor([[4.0, -2.0], [0.001, 0.0]])
    engine = reference + torch.tensor([[0.0, 0.1], [0.02, 0.0]])
    result = compare(engine, reference, 0.02, "s")
    assert result.relative_error == pytest.approx(0.1 / 4.0) and not result.passed
    assert compare(engine, reference, 0.05, "s").passed  # element-wise it would be 20x off at 0.001
    nan = engine.clone()
    nan[1, 1] = math.nan
    result = compare(nan, reference, 0.05, "s")
    assert (result.engine_nonfinite, result.pytorch_nonfinite, result.passed) == (1, 0, False)
    assert tolerance_for("float32", "float16") == TOLERANCES["float16"]


@pytest.mark.parametrize("family_name", ["sd1", "sdxl"])
def test_a_good_export_passes(tiny_unet, exported_onnx, family_name):
    report = check(tiny_unet(family_name), exported_onnx(family_name, torch.float32), family_name)
    print(f"{family_name}: " + ", ".join(f"{r.relative_error:.1e}" for r in report.shapes))
    assert report.passed and len(report.shapes) == 4 and not report.advice
    assert all(r.relative_error <= 1e-5 for r in report.shapes)
    assert report.summary().startswith("check passed")


@pytest.mark.parametrize("weight,scale,fp16_too", [
    ("up_blocks.1.resnets.0.conv1.weight", 0.9, False),  # one conv 10% off: 0.9-2e-2 (fp32 tolerance 1e-3)
    ("conv_out.weight", 0.8, True),  # the output layer 20% off: over the fp16 tolerance too
])
def test_an_export_with_a_changed_weight_fails_and_says_what_to_do(tiny_unet, corrupted_onnx, weight, scale,
                                                                   fp16_too):
    report = check(tiny_unet("sd1"), corrupted_onnx("sd1", weight, scale), "sd1")
    print(f"{weight} x{scale}: " + ", ".join(f"{r.relative_error:.1e}" for r in report.shapes))
    assert not report.passed
    assert all(r.relative_error > report.tolerance for r in report.shapes)
    if fp16_too:
        assert all(r.relative_error > TOLERANCES["float16"] for r in report.shapes)
    assert report.summary().startswith("CHECK FAILED") and "build it again" in report.advice


def test_nan_in_the_engine_is_found(tiny_unet, corrupted_onnx):
    report = check(tiny_unet("sd1"), corrupted_onnx("sd1", "conv_out.bias", float("nan")), "sd1")
    assert not report.passed and all(r.engine_nonfinite and not r.pytorch_nonfinite for r in report.shapes)
    assert "NaN/inf" in report.summary() and "NaN/inf where the PyTorch UNet does not" in report.advice


def test_the_same_seed_gives_the_same_figures(tiny_unet, exported_onnx):
    first, again = (check(tiny_unet("sd1"), exported_onnx("sd1"), "sd1", seed=3) for _ in range(2))
    assert [r.relative_error for r in first.shapes] == [r.relative_error for r in again.shapes]
