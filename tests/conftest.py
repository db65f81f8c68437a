"""Shared, session-cached test helpers: tiny UNets and their ONNX exports are made once per test run.

Both return shared objects: do not modify a cached UNet or ONNX file in a test (make your own with
``trt_lib.model.tiny_unets.make_unet`` / ``trt_lib.export.onnx_export.export_onnx`` when a test changes them).
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from trt_lib.model.families import get_family
from trt_lib.model.tiny_unets import WebuiUnet, make_unet

# The test models are tiny: extra intra-op threads only spin and wait (2-5x slower on a busy 2-core machine).
torch.set_num_threads(1)

MEMORY_LIMIT_GB = 4.0
"""The peak RAM the test process may reach, so that the suite runs on a small CI runner (README says so)."""


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fail the test that takes the process's peak memory over :data:`MEMORY_LIMIT_GB`."""
    before = peak_rss_gb()
    result = yield
    after = peak_rss_gb()
    if after > MEMORY_LIMIT_GB >= before:
        pytest.fail(f"{item.nodeid} took the test process's peak memory to {after:.1f} GB, over the "
                    f"{MEMORY_LIMIT_GB:.0f} GB the suite must fit in (tests/conftest.py): make its model or shapes "
                    "smaller")
    return result


@pytest.fixture(scope="session")
def tiny_unet() -> Callable[[str], WebuiUnet]:
    """``tiny_unet("sd1")``: the family's tiny fp32 UNet (seed 0), in eval mode."""
    cache: dict[str, WebuiUnet] = {}

    def get(family_name: str) -> WebuiUnet:
        if family_name not in cache:
            cache[family_name] = make_unet(family_name)
        return cache[family_name]

    return get


@pytest.fixture(scope="session")
def exported_onnx(tiny_unet, tmp_path_factory) -> Callable[[str, torch.dtype], Path]:
    """``exported_onnx("sdxl", torch.float16)``: path of ``tiny_unet(name)`` exported, with its weight map
    beside it."""
    from trt_lib.export.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    cache: dict[tuple[str, torch.dtype], Path] = {}

    def get(family_name: str, dtype: torch.dtype = torch.float32) -> Path:
        key = (family_name, dtype)
        if key not in cache:
            path = folder / f"{family_name}-{str(dtype).removeprefix('torch.')}" / "unet.onnx"
            path.parent.mkdir()
            cache[key] = export_onnx(tiny_unet(family_name), get_family(family_name), path, dtype=dtype).path
        return cache[key]

    return get


@pytest.fixture(scope="session")
def corrupted_onnx(exported_onnx, tmp_path_factory) -> Callable[[str, str, float], Path]:
    """``corrupted_onnx("sd1", "conv_in.weight", 1.05)``: a copy of the family's fp32 export (with its weight
    map) whose one weight is scaled, as a bad export or engine built from other weights would hold it;
    ``float("nan")`` puts NaN into it."""
    import shutil

    import onnx
    from onnx import numpy_helper

    def make(family_name: str, weight: str, scale: float) -> Path:
        source = exported_onnx(family_name, torch.float32)
        folder = tmp_path_factory.mktemp("corrupted") / f"{family_name}-{weight}-{scale}"
        shutil.copytree(source.parent, folder)
        model = onnx.load(str(folder / source.name))
        init = next(i for i in model.graph.initializer if i.name == weight)
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * scale, weight))
        onnx.save(model, str(folder / source.name))
        return folder / source.name

    return make
