"""CUDA graph replay of engine calls (full TensorRT's runner uses it), checked with a real tiny UNet in
PyTorch standing in for the engine's enqueue. Needs a CUDA GPU: runs on the device machine, skipped in CI."""

from __future__ import annotations

import pytest
import torch

from trt_lib.engines.cuda_graphs import GraphCache
from trt_lib.model.families import get_family
from trt_lib.model.tiny_unets import make_unet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
SD1 = get_family("sd1")


@pytest.fixture(scope="module")
def unet():
    return make_unet("sd1", dtype=torch.float16).cuda().eval()


def inputs(batch: int, size: int, seed: int) -> list[torch.Tensor]:
    feeds = SD1.example_inputs(batch, size, size, 77, dtype=torch.float16, device="cuda", seed=seed)
    return [feeds[n] for n in SD1.input_names]


def enqueue_of(unet, calls: list):
    def enqueue(tensors):
        calls.append(torch.cuda.is_current_stream_capturing())
        return unet(*tensors)
    return enqueue


@torch.no_grad()
def test_replay_gives_the_direct_result_for_new_inputs(unet):
    cache, calls = GraphCache(), []
    enqueue = enqueue_of(unet, calls)
    for seed in range(3):
        x = inputs(2, 64, seed)
        torch.testing.assert_close(cache.run("profile 0", x, enqueue).clone(), unet(*x), rtol=0, atol=1e-3)
    assert calls == [False, True] and len(cache) == 1 and cache.error is None  # warm-up, capture, then replays


@torch.no_grad()
def test_a_context_whose_shapes_change_runs_without_a_graph(unet):
    cache, calls = GraphCache(), []
    enqueue = enqueue_of(unet, calls)
    cache.run("dynamic", inputs(2, 64, 0), enqueue)
    cache.run("static", inputs(1, 64, 0), enqueue)
    for batch, size, seed in [(1, 128, 1), (2, 64, 2), (1, 128, 3)]:
        x = inputs(batch, size, seed)
        torch.testing.assert_close(cache.run("dynamic", x, enqueue), unet(*x), rtol=0, atol=1e-3)
    assert calls[4:] == [False, False, False]  # run as they are, never captured again
    x = inputs(1, 64, 4)
    torch.testing.assert_close(cache.run("static", x, enqueue).clone(), unet(*x), rtol=0, atol=1e-3)
    assert len(cache) == 1 and len(calls) == 7  # the static context still replays its graph


@torch.no_grad()
def test_a_call_that_cannot_be_captured_runs_without_graphs(unet):
    cache = GraphCache()

    def syncing(tensors):  # a host read: not capturable
        out = unet(*tensors)
        float(out.sum())
        return out

    x = inputs(2, 64, 0)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        got = cache.run("a", x, syncing)
    torch.testing.assert_close(got, unet(*x), rtol=0, atol=1e-3)
    assert cache.error and len(cache) == 0
    torch.testing.assert_close(cache.run("a", inputs(2, 64, 1), syncing), unet(*inputs(2, 64, 1)), rtol=0, atol=1e-3)

