"""The reference runtime with initializer overrides (the LoRA refit stand-in, the engine check's corrupted
weight) on fp16 exports: ONNX Runtime up to 1.30 could not load them on the CPU when the runner turned every
graph optimisation off (its fp16 cast insertion typed the attention's no-op fp16 Cast float)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import load as load_model
from onnx import numpy_helper

from trt_lib.export import initializer_values, load_weight_map
from trt_lib.families import get_family
from trt_lib.onnx_runtime import OnnxRuntimeRunner
from trt_lib.profiles import Profile
from trt_lib.tiny_unets import make_unet

PROFILE = Profile.from_dict({"batch": [1, 1, 2], "height": [64, 64, 64], "width": [64, 64, 64], "tokens": [75, 75, 75]})


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("family_name", ["sd1", "sdxl"])
def test_fp16_export_takes_every_override_and_returns_to_base(tiny_unet, exported_onnx, family_name):
    fam = get_family(family_name)
    onnx = exported_onnx(family_name, torch.float16)
    weight_map = load_weight_map(onnx)
    feeds = fam.example_inputs(1, 64, 64, 77, seed=3)
    base_out = OnnxRuntimeRunner(onnx, fam.input_names, fam.output_name, [fam.engine_shapes(PROFILE)])(feeds)

    # Every weight from another UNet, as a full refit would give: the export must compute that UNet.
    other = make_unet(fam, seed=7)
    run = OnnxRuntimeRunner(onnx, fam.input_names, fam.output_name, [fam.engine_shapes(PROFILE)],
                            initializer_values(other, weight_map))
    got = run(feeds)
    with torch.no_grad():
        want = other(*feeds.values())
    error = rel(got, want)
    print(f"{family_name} fp16, all {len(weight_map)} weights overridden: relative error to PyTorch {error:.2e}")
    # Measured 1.3e-3 to 1.4e-3 (fp16 rounding); leaving out any one weight that differs gave 1.6e-2 or more
    # (27 of sd1's sampled), so the bound tells an ignored override.
    assert error <= 5e-3 < rel(base_out, want)

    # Back to the exported weights (a LoRA switched off): the output is the export's own again.
    exported = {i.name: numpy_helper.to_array(i) for i in load_model(str(onnx)).graph.initializer}
    run.refit(exported)
    back = run(feeds)
    assert all(np.array_equal(v, exported[k]) for k, v in run.refitted.items())
    # fp16 rounding only: the session with overrides skips constant folding, so sums may run in another order.
    print(f"back to base: relative error {rel(back, base_out):.2e}")
    assert rel(back, base_out) <= 1e-3
