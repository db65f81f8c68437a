"""What ControlNet-ready engines cost: export and build time, engine size, host time per call.

For one family's UNet (random weights; ``--size real`` gives the released architecture, e.g. SD 1.5), exports
a plain and a ControlNet-ready ONNX, builds both with the chosen backend (TensorRT for RTX builds on the CPU for
``--cc``; full TensorRT needs its GPU), then times UNet calls through :class:`trt_lib.engines.unet_session.UnetSession`
with the tensors on the GPU and a runner whose engine work is nil (engines of TensorRT for RTX do not run on
the benchmark GPUs, and the stand-in's ONNX Runtime on the CPU says nothing about an engine's speed): the host
time our code spends per call (engine choice, zero residuals, feeds, profile check) for a plain engine, a
ControlNet-ready engine given no residuals (cached zeros bound) and one given ControlNet's residuals.

    python bench/controlnet_bench.py --size real --family sd1       # on the device (SD 1.5, 512 px)
    python bench/controlnet_bench.py --size tiny                    # the CPU numbers in the README
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from trt_lib.backends import get_backend  # noqa: E402
from trt_lib.engines.runtime import EngineRunner  # noqa: E402
from trt_lib.engines.unet_session import UnetSession  # noqa: E402
from trt_lib.export.onnx_export import export_onnx  # noqa: E402
from trt_lib.model.families import get_family, unet_residual_points  # noqa: E402
from trt_lib.model.profiles import Profile, UnetCall  # noqa: E402
from trt_lib.model.tiny_unets import make_unet  # noqa: E402
from trt_lib.store.engine_store import EngineEntry  # noqa: E402
from trt_lib.table import print_table  # noqa: E402


def entry(family: str, profile: Profile, points: tuple) -> EngineEntry:
    return EngineEntry(id="bench", checkpoint="bench", checkpoint_hash="0", family=family,
                       profiles=[profile.to_dict()], backend="onnxruntime", backend_version="-",
                       compute_capabilities=[], engine_file="", engine_bytes=0, controlnet=bool(points),
                       controlnet_residuals=[[p.channels, p.downscale] for p in points])


class NullRunner(EngineRunner):
    """The runner interface with no engine work: the profile check runs, ``infer`` hands back one buffer."""

    def __init__(self, *args, out: torch.Tensor) -> None:
        super().__init__(*args)
        self.out = out

    def infer(self, feeds, profile_index: int) -> torch.Tensor:
        return self.out


def host_ms(call: Callable[[], torch.Tensor], calls: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the wall time per call, in ms (the GPU work, if any, is not waited for)."""
    for _ in range(20):
        call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        samples.append((time.perf_counter() - start) / calls * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sd1")
    parser.add_argument("--size", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--backend", default="tensorrt_rtx")
    parser.add_argument("--cc", default="8.9", help="compute capability to build for (TensorRT for RTX)")
    parser.add_argument("--px", type=int, default=0, help="static profile side in px (default 512 real, 64 tiny)")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--no-build", action="store_true", help="skip the engine builds (export and calls only)")
    args = parser.parse_args()
    family = get_family(args.family)
    px = args.px or (512 if args.size == "real" else 64)
    profile = Profile.static(1, px, px)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    unet = make_unet(family, tiny=args.size == "tiny", dtype=dtype).to(device)
    points = unet_residual_points(unet)
    rows = [["engine", "export s", "build s", "engine MB", "host ms/call, no residuals",
             "host ms/call, residuals"]]
    call = UnetCall(2, px // 8, px // 8, 77)
    feeds = family.example_inputs(call.batch, call.height, call.width, call.context_len, dtype=dtype,
                                  device=device, controlnet=points)
    base = [feeds.get(n) for n in ("sample", "timesteps", "encoder_hidden_states", "y")]
    control = [feeds[f"control_{i}"] for i in range(len(points))]
    with tempfile.TemporaryDirectory() as tmp:
        for name, controlnet in (("plain", False), (f"ControlNet-ready ({len(points)} inputs)", True)):
            onnx = Path(tmp) / name.split()[0] / "unet.onnx"
            start = time.perf_counter()
            report = export_onnx(unet, family, onnx, dtype=dtype, controlnet=controlnet)
            exported = time.perf_counter() - start
            shapes = [family.engine_shapes(profile, report.controlnet)]
            built, size = float("nan"), float("nan")
            if not args.no_build:
                build = get_backend(args.backend).build(onnx, Path(tmp) / f"{name.split()[0]}.engine", shapes,
                                                        compute_capability=args.cc, cache_dir=Path(tmp) / "cache")
                built, size = build.seconds, build.engine_bytes / 2**20
            runner = NullRunner(onnx, family.engine_input_names(report.controlnet), family.output_name, shapes,
                                out=torch.empty_like(feeds["sample"][:, :family.out_channels]))
            session = UnetSession([entry(family.name, profile, report.controlnet)], family, "bench",
                                  lambda e, r=runner: r)
            plain_ms = host_ms(partial(session, *base), args.calls)
            given_ms = host_ms(partial(session, *base, control=control), args.calls) if controlnet else float("nan")
            rows.append([name, f"{exported:.1f}", f"{built:.1f}", f"{size:.1f}", f"{plain_ms:.4f}",
                         f"{given_ms:.4f}"])
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{family.label} {args.size} UNet, {dtype}, static {px}x{px} px, calls of {call.batch} rows; {gpu}; "
          f"backend {args.backend} for compute capability {args.cc}; host time: median of 5 x {args.calls} calls, "
          "no engine work")
    print_table(rows)


if __name__ == "__main__":
    main()
