"""The reference runtime with initializer overrides (the LoRA refit stand-in, the engine check's corrupted
weight) on fp16 exports: ONNX Runtime up to 1.30 could not load them on the CPU when the runner turned every
graph optimisation off (its fp16 cast insertion typed the attention's no-op fp16 Cast float)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import load as load_model
from onnx import numpy_helper

from trt_lib.engines import onnx_runtime
from trt_lib.engines.onnx_runtime import OnnxRuntimeRunner
from trt_lib.export.onnx_export import initializer_values, load_weight_map
from trt_lib.model.families import get_family
from trt_lib.model.profiles import Profile
from trt_lib.model.tiny_unets import make_unet

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


class _Recording:
    """``onnxruntime.InferenceSession`` that records the providers asked for and builds a CPU session."""

    asked: list[list[str]] = []

    def __new__(cls, path, options, providers, **kwargs):
        import onnxruntime as ort

        cls.asked.append(list(providers))
        return ort.capi.onnxruntime_inference_collection.InferenceSession(
            path, options, providers=[onnx_runtime.CPU], **kwargs)


def test_with_cuda_overrides_run_on_the_cpu_provider(exported_onnx, monkeypatch):
    """The CUDA provider was measured to ignore an override (a refit must never be lost): such sessions run on
    the CPU provider; plain ones keep CUDA."""
    import onnxruntime as ort

    fam, onnx = get_family("sd1"), exported_onnx("sd1", torch.float32)
    monkeypatch.setattr(onnx_runtime, "providers", lambda: [onnx_runtime.CUDA, onnx_runtime.CPU])
    monkeypatch.setattr(ort, "InferenceSession", _Recording)
    _Recording.asked = []
    OnnxRuntimeRunner(onnx, fam.input_names, fam.output_name, [fam.engine_shapes(PROFILE)])
    values = initializer_values(make_unet(fam, seed=7), load_weight_map(onnx), ["conv_out.weight"])
    runner = OnnxRuntimeRunner(onnx, fam.input_names, fam.output_name, [fam.engine_shapes(PROFILE)], values)
    runner.refit(values)
    assert _Recording.asked == [[onnx_runtime.CUDA, onnx_runtime.CPU], [onnx_runtime.CPU], [onnx_runtime.CPU]]


class _AsIfCuda:
    """A session that says it runs on CUDA (ONNX Runtime's CPU build has no CUDA provider to test with)."""

    def __init__(self, session) -> None:
        self.session = session

    def get_providers(self) -> list[str]:
        return [onnx_runtime.CUDA, onnx_runtime.CPU]

    def run(self, *args):
        return self.session.run(*args)


@pytest.mark.parametrize(("rows", "latent", "on_cpu"), [(2, 64, False), (8, 64, False), (2, 96, False),
                                                        (4, 96, True), (8, 96, True), (1, 128, True)])
def test_calls_beyond_the_cuda_kernels_indexing_run_on_the_cpu(exported_onnx, rows, latent, on_cpu):
    """8 rows of 768 px crashed ONNX Runtime's CUDA provider with an illegal memory access (32-bit indexing of
    8 x 8 x 9216² attention scores); such calls get a CPU session, the rest stay on CUDA."""
    fam, onnx = get_family("sd1"), exported_onnx("sd1", torch.float32)
    runner = OnnxRuntimeRunner(onnx, fam.input_names, fam.output_name, [fam.engine_shapes(PROFILE)])
    cuda = runner._session = _AsIfCuda(runner._session)
    chosen = runner._session_for(torch.Size([rows, 4, latent, latent]))
    assert (chosen is not cuda) == on_cpu
    if on_cpu:
        assert chosen.get_providers() == [onnx_runtime.CPU]
        assert runner._session_for(torch.Size([rows, 4, latent, latent])) is chosen  # made once
