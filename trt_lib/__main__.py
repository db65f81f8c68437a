"""``python -m trt_lib demo``: the whole path on a built-in tiny UNet, on a machine without a GPU.

Makes a tiny real-architecture UNet of a family, exports it to ONNX, builds a TensorRT-for-RTX engine for a
named compute capability, records it in an engine store, runs it through the ONNX Runtime reference runtime at
several shapes of its profile and prints a table (shapes, error against PyTorch, times, sizes).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from .families import get_family
from .onnx_runtime import reference_runner
from .pipeline import BuildRequest, build_engine
from .profiles import Profile, UnetCall, context_len
from .store import EngineStore
from .table import print_table
from .tiny_unets import make_unet

DEMO_PROFILE = {"batch": [1, 1, 2], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 150]}


def demo(family_name: str, folder: Path, compute_capability: str, dtype: torch.dtype) -> list[list[str]]:
    family = get_family(family_name)
    unet = make_unet(family, tiny=True, seed=0).eval()
    profile = Profile.from_dict(DEMO_PROFILE)
    store = EngineStore(folder)
    request = BuildRequest(f"demo-{family.name}", "0" * 10, family, [profile], backend="tensorrt_rtx",
                           compute_capability=compute_capability, dtype=dtype)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()

    def progress(stage: str, fraction: float) -> None:
        stages.setdefault("export done" if fraction >= 0.3 and "export done" not in stages else stage,
                          time.perf_counter() - t0)

    entry = build_engine(unet, request, store, progress=progress)
    total = time.perf_counter() - t0
    runner = reference_runner(store, entry)
    rows = [["call (rows, px, tokens)", "rel. error vs PyTorch", "ONNX Runtime ms"]]
    for call in (UnetCall(1, 8, 8, 77), UnetCall(2, 16, 8, 154), UnetCall(4, 16, 16, 77)):
        feeds = family.example_inputs(call.batch, call.height, call.width, call.context_len, seed=1)
        with torch.no_grad():
            ref = unet(*[feeds[n] for n in family.input_names[:3]], **({"y": feeds["y"]} if "y" in feeds else {}))
        t = time.perf_counter()
        out = runner({k: v.to(dtype) for k, v in feeds.items()}).float()
        ms = (time.perf_counter() - t) * 1000
        err = float((out - ref).norm() / ref.norm())
        rows.append([f"{call.batch}, {call.width}x{call.height}, {call.tokens}", f"{err:.2e}", f"{ms:.1f}"])
    onnx = store.onnx_path(entry)
    onnx_bytes = sum(f.stat().st_size for f in onnx.parent.iterdir()) if onnx else 0
    rows += [["", "", ""],
             ["family / dtype", f"{family.label} / {entry.dtype}", ""],
             ["profile", profile.label(), f"{context_len(profile.tokens.max)} ctx rows max"],
             ["export + build (s)", f"{total - entry.build_seconds:.1f} + {entry.build_seconds:.1f}", ""],
             ["engine", f"{entry.backend} {entry.backend_version} sm {', '.join(entry.compute_capabilities)}",
              f"{entry.engine_bytes / 2**20:.2f} MB"],
             ["ONNX", onnx.name if onnx else "-", f"{onnx_bytes / 2**20:.2f} MB"],
             ["store", str(store.folder), f"{len(store.entries())} engine(s)"]]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m trt_lib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="export, build and run a tiny UNet (no GPU needed)")
    d.add_argument("--family", default="sd1", help="model family (models/families/*.json)")
    d.add_argument("--out", type=Path, default=None, help="engine folder (default: a temporary one)")
    d.add_argument("--compute-capability", default="8.9", help="target GPU for TensorRT for RTX")
    d.add_argument("--fp32", action="store_true", help="export in fp32 instead of fp16")
    args = parser.parse_args()
    os.environ.setdefault("POLYGRAPHY_USE_TENSORRT_RTX", "1")
    with tempfile.TemporaryDirectory() as tmp:
        rows = demo(args.family, args.out or Path(tmp) / "engines", args.compute_capability,
                    torch.float32 if args.fp32 else torch.float16)
        print_table(rows)


if __name__ == "__main__":
    main()
