"""Time the engine check on a real-size, random-weight UNet: its fp16 ONNX on ONNX Runtime (the reference
runtime, CUDA provider with ``onnxruntime-gpu``) against the fp16 PyTorch UNet; print the per-shape table.

Runs the product's comparison (:func:`trt_lib.engines.engine_check.check_engine`) at the shapes a check of an engine
with this profile runs, plus, with ``--corrupted``, the same export with its output layer 20% off (fed to
ONNX Runtime as a refit, i.e. initializer overrides) to show the check failing at full size.

    pip install onnxruntime-gpu   # the CUDA provider; without it ONNX Runtime runs on the CPU (slow)
    python bench/check_bench.py --family sd1 --work /tmp/check-bench --corrupted
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trt_lib.engines.engine_check import check_engine, tolerance_for  # noqa: E402
from trt_lib.engines.onnx_runtime import OnnxRuntimeRunner, providers  # noqa: E402
from trt_lib.export.onnx_export import export_onnx, load_weight_map  # noqa: E402
from trt_lib.model.families import get_family  # noqa: E402
from trt_lib.model.profiles import Profile  # noqa: E402
from trt_lib.model.tiny_unets import make_unet  # noqa: E402
from trt_lib.table import print_table  # noqa: E402

PRESET = {"sd1": "dynamic-512-768", "sd2": "dynamic-512-768", "sdxl": "static-1024"}


def timed(fn: Callable, times: list[float]) -> Callable:
    """``fn`` with its wall time per call (GPU work included) appended to ``times``."""
    def run(*args: object) -> torch.Tensor:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        return out
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sd1")
    parser.add_argument("--preset", default="", help="a preset of the family (default: the build bench's)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/check-bench"))
    parser.add_argument("--corrupted", action="store_true", help="also check a copy with conv_out.weight x0.8")
    parser.add_argument("--tiny", action="store_true", help="the tiny UNet (a quick run of this script anywhere)")
    args = parser.parse_args()
    family = get_family(args.family)
    profile: Profile = family.preset(args.preset or PRESET.get(args.family, family.default_preset.name)).profile
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    unet = make_unet(family, tiny=args.tiny, dtype=dtype).to(device)
    onnx = args.work / f"{args.family}{'-tiny' if args.tiny else ''}" / "unet.onnx"
    start = time.perf_counter()
    if not onnx.is_file():
        export_onnx(unet, family, onnx, dtype=dtype, device=device)
    export_s = time.perf_counter() - start

    names = family.input_names

    def forward(feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        return unet(*(feeds[n] for n in names[:3]), y=feeds.get("y"))

    for label, overrides in [("as exported", None)] + ([("conv_out.weight x0.8", "conv_out.weight")]
                                                        if args.corrupted else []):
        start = time.perf_counter()
        values = None
        if overrides:
            key = load_weight_map(onnx)[overrides].key
            values = {overrides: (unet.state_dict()[key].float() * 0.8).to(dtype).cpu().numpy()}
        runner = OnnxRuntimeRunner(onnx, names, family.output_name, [family.engine_shapes(profile)], values)
        load_s = time.perf_counter() - start
        ref_times: list[float] = []
        engine_times: list[float] = []
        pytorch = partial(nullcontext, timed(forward, ref_times))  # the bare UNet: nothing to hold or restore
        report = check_engine(timed(runner, engine_times), pytorch, family, [profile], dtype=dtype, device=device,
                              tolerance=tolerance_for(str(dtype).removeprefix("torch.")),
                              runtime=runner.runtime_name, reference=f"PyTorch UNet ({dtype}, {device})")
        print(f"\n{family.label}, {label}: {report.runtime} (providers {providers()}) vs {report.reference}; "
              f"{report.summary()}")
        rows = [["shape", "relative error", "NaN/inf", "PyTorch ms", "ONNX Runtime ms"]]
        rows += [[r.shape, f"{r.relative_error:.2e}", r.engine_nonfinite + r.pytorch_nonfinite,
                  f"{a * 1e3:.0f}", f"{b * 1e3:.0f}"] for r, a, b in zip(report.shapes, ref_times, engine_times)]
        print_table(rows)
        print(f"export {export_s:.1f} s (0 if reused), ONNX Runtime session {load_s:.1f} s, "
              f"check {report.seconds:.1f} s (first calls include ONNX Runtime's kernel setup)")
        runner.close()


if __name__ == "__main__":
    main()
