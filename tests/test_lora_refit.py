"""LoRA refit, library part: refit arrays from merged weights, the switching state (A -> B -> none), the
checks that refuse engines which cannot take a LoRA, and the digest that proves an exact restore."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from lora_files import kohya_key, layer_names, make_lora, merged_by_hand
from onnx import load as load_model
from onnx import numpy_helper

from trt_lib.engines.lora_refit import (
    LoraRefitter,
    LoraUse,
    MergedWeights,
    UncoveredLoraError,
    lora_key,
    parameter_keys,
    refit_arrays,
    state_digest,
)
from trt_lib.engines.onnx_runtime import OnnxRuntimeRunner
from trt_lib.export.onnx_export import load_weight_map
from trt_lib.model.families import get_family
from trt_lib.model.profiles import Profile
from trt_lib.store.engine_store import EngineEntry

PROFILE = Profile.from_dict({"batch": [1, 1, 2], "height": [64, 64, 64], "width": [64, 64, 64], "tokens": [75, 75, 75]})


def runner(family_name: str, onnx) -> OnnxRuntimeRunner:
    fam = get_family(family_name)
    return OnnxRuntimeRunner(onnx, fam.input_names, fam.output_name, [fam.engine_shapes(PROFILE)])


def inputs(family_name: str) -> dict[str, torch.Tensor]:
    return get_family(family_name).example_inputs(1, 64, 64, 77, seed=3)


def torch_out(unet: torch.nn.Module, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return unet(*feeds.values())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def entry(onnx, *, refittable: bool = True) -> EngineEntry:
    return EngineEntry(id="e1", checkpoint="c", checkpoint_hash="h", family="sd1", profiles=[PROFILE.to_dict()],
                       backend="tensorrt", backend_version="x", compute_capabilities=[], engine_file="e1.engine",
                       engine_bytes=0, onnx_file=str(onnx), refittable=refittable, dtype="float32")


@pytest.mark.parametrize("family_name", ["sd1", "sdxl"])
def test_refit_arrays_reproduce_the_merged_model(tiny_unet, exported_onnx, family_name):
    base = tiny_unet(family_name)
    onnx = exported_onnx(family_name)
    merged = merged_by_hand(base, [(make_lora(base, layer_names(base)), 0.8)])
    changed = parameter_keys(merged, [merged.get_submodule(n) for n in layer_names(base)])
    assert len(changed) == 5  # the weights of the three layers and the biases of the two convolutions
    arrays = refit_arrays({k: merged.state_dict()[k] for k in changed}, load_weight_map(onnx))
    run = runner(family_name, onnx)
    feeds = inputs(family_name)
    before = run(feeds)
    run.refit(arrays)
    got, want = run(feeds), torch_out(merged, feeds)
    error = rel(got, want)
    print(f"{family_name}: refitted ONNX vs PyTorch with the LoRA merged by hand: relative error {error:.2e}")
    assert error <= 1e-4
    assert rel(before, want) > 1e-3, "the LoRA must change the output for this test to mean anything"


def hand_merge_fn(base: torch.nn.Module, files: dict[str, dict[str, torch.Tensor]]):
    """A merge function for :class:`LoraRefitter` built on the hand merge, counting its calls."""
    calls = []

    def merge(key, extra):
        calls.append((key, extra))
        model = merged_by_hand(base, [(files[u.name], u.weight) for u in key])
        layers = [n for u in key for n in layer_names(base) if f"{kohya_key(n)}.alpha" in files[u.name]]
        changed = parameter_keys(model, [model.get_submodule(n) for n in layers])
        state = model.state_dict()
        return MergedWeights(key, changed, {k: state[k] for k in changed | extra})

    return merge, calls


def test_switching_a_to_b_to_none_returns_exactly_to_base(tiny_unet, exported_onnx):
    base = tiny_unet("sd1")
    onnx = exported_onnx("sd1")
    names = layer_names(base)
    files = {"a": make_lora(base, names[:2], seed=1), "b": make_lora(base, names[1:], seed=2, loha=True)}
    merge, calls = hand_merge_fn(base, files)
    refitter = LoraRefitter(merge, lambda e: load_weight_map(onnx))
    eng, run, feeds = entry(onnx), runner("sd1", onnx), inputs("sd1")
    base_out = run(feeds).clone()
    a, b = lora_key([LoraUse("a", 0.7)]), lora_key([LoraUse("b", 1.0)])

    refitter.want(a, [eng])
    assert refitter.sync(eng, run).weights == 3  # to_q has no bias
    assert refitter.sync(eng, run) is None, "one refit per change of LoRA set"
    after_a = run(feeds)
    error_a = rel(after_a, torch_out(merged_by_hand(base, [(files["a"], 0.7)]), feeds))
    refitter.want(b, [eng])
    assert refitter.sync(eng, run).weights == 5  # a's layers back to base, b's merged: the union
    after_b = run(feeds)
    error_b = rel(after_b, torch_out(merged_by_hand(base, [(files["b"], 1.0)]), feeds))
    print(f"A: relative error {error_a:.2e}; B (no trace of A): {error_b:.2e}")
    assert error_a <= 1e-4 and error_b <= 1e-4
    refitter.want((), [eng])
    assert refitter.sync(eng, run).weights == 4  # only b's weights
    # Exact where it is exact: every weight the runner holds is the exported initializer, bit for bit.
    exported = {i.name: numpy_helper.to_array(i) for i in load_model(str(onnx)).graph.initializer}
    weight_map = load_weight_map(onnx)
    touched = parameter_keys(base, [base.get_submodule(n) for n in names])
    assert {weight_map[n].key for n in run.refitted} == touched  # a's and b's layers, all refitted back
    for name, value in run.refitted.items():
        assert value.dtype == exported[name].dtype and np.array_equal(value, exported[name]), name
    # The same weights give the same computation: bit for bit equal to a runner given the exported values.
    reference = runner("sd1", onnx)
    reference.refit(refit_arrays({k: base.state_dict()[k] for k in touched}, weight_map))
    out = run(feeds)
    assert torch.equal(out, reference(feeds)), "back to the exported weights bit for bit"
    # Against the output before any LoRA only up to float rounding: overridden weights turn ONNX Runtime's
    # constant folding and the extended graph optimisations off, so the same fp32 sums run in another order
    # (measured ~1e-6, CPU-dependent).
    # 1e-4 is the bound this file puts on ONNX Runtime vs PyTorch; a LoRA left in moves the output far more
    # (checked), so the bound still tells "back to base" from "a trace of A or B".
    assert rel(out, base_out) <= 1e-4 < rel(after_a, base_out) and rel(after_b, base_out) > 1e-4
    assert [c[0] for c in calls] == [a, b, ()]


def test_weight_zero_is_the_base_set():
    assert lora_key([LoraUse("a", 0.0), LoraUse("b", 0.5)]) == (LoraUse("b", 0.5),)


@pytest.mark.catalogue("sampling")
def test_engines_that_cannot_take_a_lora_are_refused(tiny_unet, exported_onnx):
    base = tiny_unet("sd1")
    onnx = exported_onnx("sd1")
    merge, _ = hand_merge_fn(base, {"a": make_lora(base, layer_names(base))})
    key = lora_key([LoraUse("a", 1.0)])
    refitter = LoraRefitter(merge, lambda e: load_weight_map(onnx))
    with pytest.raises(UncoveredLoraError, match="engine e1 was built without refit"):
        refitter.want(key, [entry(onnx, refittable=False)])
    partial = {k: v for k, v in load_weight_map(onnx).items() if "attn1.to_q" not in v.key}
    refitter = LoraRefitter(merge, lambda e: partial)
    with pytest.raises(UncoveredLoraError, match=r"changes 1 weights engine e1 does not hold \(e.g. .*attn1.to_q"):
        refitter.want(key, [entry(onnx)])
    assert refitter.wanted == ()


def test_digest_sees_a_one_bit_change(tiny_unet):
    model = copy.deepcopy(tiny_unet("sd1"))
    before = state_digest(model)
    with torch.no_grad():
        flat = model.conv_in.weight.view(-1).view(torch.int32)
        flat[0] ^= 1
    after = state_digest(model)
    assert [k for k in before if before[k] != after[k]] == ["conv_in.weight"]
