"""ControlNet-ready engines in the library: built and recorded (real TensorRT-for-RTX build), chosen for
ControlNet calls, run through the runner interface with residuals or with cached zero residuals."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from ldm_layout import LdmView, controlnet_unet_loop

from trt_lib.engines.matching import choose
from trt_lib.engines.onnx_runtime import reference_runner
from trt_lib.engines.runtime import EngineRunner
from trt_lib.engines.unet_session import UnetSession
from trt_lib.errors import EngineRunError, NoProfileError, StoreError
from trt_lib.jobs.pipeline import BuildRequest, build_engine
from trt_lib.model.families import get_family
from trt_lib.model.profiles import Profile, UnetCall
from trt_lib.store.engine_store import EngineEntry, EngineStore

pytest.importorskip("tensorrt_rtx")
PROFILE = Profile.from_dict({"batch": [1, 1, 1], "height": [64, 64, 128], "width": [64, 64, 64],
                             "tokens": [75, 75, 150]})


def request(name: str, controlnet: bool) -> BuildRequest:
    return BuildRequest(f"ckpt-{name}", "abc123", get_family(name), [PROFILE], backend="tensorrt_rtx",
                        compute_capability="8.9", dtype=torch.float32, controlnet=controlnet)


@pytest.fixture(scope="module")
def built(tiny_unet, tmp_path_factory):
    """``built(name)``: (store, ControlNet-ready entry, plain entry) of the tiny UNet, built for real."""
    cache = {}

    def get(name: str):
        if name not in cache:
            store = EngineStore(tmp_path_factory.mktemp(f"cn-{name}"))
            ready = build_engine(tiny_unet(name), request(name, True), store)
            plain = build_engine(tiny_unet(name), request(name, False), store)
            cache[name] = store, ready, plain
        return cache[name]

    return get


class Recording(EngineRunner):
    """Wraps the stand-in runner and keeps what each call was fed."""

    def __init__(self, inner: EngineRunner) -> None:
        super().__init__(inner.path, inner.input_names, inner.output_name, inner.profiles)
        self.inner, self.feeds = inner, []

    def infer(self, feeds, profile_index):
        self.feeds.append(dict(feeds))
        return self.inner.infer(feeds, profile_index)


def session(store: EngineStore, entries: list[EngineEntry], name: str) -> tuple[UnetSession, list[Recording]]:
    runners: list[Recording] = []

    def load(entry: EngineEntry) -> EngineRunner:
        runners.append(Recording(reference_runner(store, entry)))
        return runners[-1]

    return UnetSession(entries, get_family(name), f"ckpt-{name}", load), runners


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_controlnet_ready_engine_is_recorded_and_shown(name, built, tiny_unet):
    store, ready, plain = built(name)
    again = EngineStore(store.folder).get(ready.id)
    assert again == ready and again.controlnet and not plain.controlnet
    assert [tuple(p) for p in again.controlnet_residuals] == [
        (p.channels, p.downscale) for p in get_family(name).controlnet_residuals(tiny_unet(name))]
    assert "ControlNet" in again.label() and "ControlNet" not in plain.label()
    assert ready.onnx_file != plain.onnx_file  # its own export, with the residual inputs


def test_manifest_entry_whose_controlnet_fields_disagree_is_refused(built):
    _, ready, _ = built("sd1")
    with pytest.raises(StoreError, match="disagree"):
        EngineEntry.from_dict({**ready.to_dict(), "controlnet_residuals": []})


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_session_runs_residuals_and_binds_cached_zeros_without_them(name, built, tiny_unet):
    store, ready, _ = built(name)
    family, unet = get_family(name), tiny_unet(name)
    points = ready.residual_points
    run, runners = session(store, [ready], name)
    for seed, call in enumerate((UnetCall(2, 8, 8, 77), UnetCall(1, 16, 8, 154))):
        feeds = family.example_inputs(call.batch, call.height, call.width, call.context_len, seed=seed,
                                      controlnet=points)
        x, t, c, y = feeds["sample"], feeds["timesteps"], feeds["encoder_hidden_states"], feeds.get("y")
        control = [feeds[f"control_{i}"] for i in range(len(points))]
        with torch.no_grad():
            want = controlnet_unet_loop(LdmView(unet), x, t, c, y, control)
            plain = unet(x, t, c, y)
        assert rel(run(x, t, c, y, control=control), want) < 1e-4
        partial = [None, *control[1:]]  # a point ControlNet left at 0.0
        with torch.no_grad():
            want_partial = controlnet_unet_loop(LdmView(unet), x, t, c, y, [0.0, *control[1:]])
        assert rel(run(x, t, c, y, control=partial), want_partial) < 1e-4
        first = run(x, t, c, y).clone()
        assert rel(first, plain) < 1e-5
        run(x, t, c, y)
        zeros = [runners[0].feeds[-1][f"control_{i}"] for i in range(len(points))]
        before = [runners[0].feeds[-2][f"control_{i}"] for i in range(len(points))]
        assert all(a is b and not a.any() for a, b in zip(zeros, before))  # the same buffers, no allocation
    with pytest.raises(EngineRunError, match="residuals"):
        run(x, t, c, y, control=control[:-1])


def test_controlnet_calls_need_a_controlnet_ready_engine(built):
    store, ready, plain = built("sd1")
    call = UnetCall(2, 8, 8, 77)
    assert choose([ready, plain], call).entry is plain  # plain calls: the engine without residual inputs
    assert choose([ready, plain], call, controlnet=True).entry is ready
    assert choose([plain], call, controlnet=True) is None
    run, _ = session(store, [plain], "sd1")
    feeds = get_family("sd1").example_inputs(2, 64, 64, 77)
    with pytest.raises(NoProfileError, match='"ControlNet-ready" ticked .*"controlnet": true'):
        run(feeds["sample"], feeds["timesteps"], feeds["encoder_hidden_states"], control=[None] * 5)
    wide = dataclasses.replace(ready, id="wide", profiles=[Profile.static(1, 256, 256).to_dict()])
    run, _ = session(store, [plain, wide], "sd1")
    with pytest.raises(NoProfileError, match="the nearest engine, wide"):
        run(feeds["sample"], feeds["timesteps"], feeds["encoder_hidden_states"], control=[None] * 5)
