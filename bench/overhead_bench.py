"""Host time the provider adds to each UNet call, against calling the engine runner directly.

Runs a real tiny UNet exported to ONNX through the ONNX Runtime stand-in (engines cannot run on the
benchmark GPUs), with the inputs on the GPU when there is one. The runner's own work (``infer``) is timed
from inside and taken out, so what remains is exactly the host time spent in our code per call: the
provider's forward (WebUI stand-in ``modules`` from tests/webui_stub), the UNet session's shape lookup and
the runner's profile check. Target: provider overhead ≤ 0.05 ms per call.

    python bench/overhead_bench.py --calls 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trt_lib.engines.onnx_runtime import OnnxRuntimeRunner  # noqa: E402
from trt_lib.engines.unet_session import UnetSession  # noqa: E402
from trt_lib.export.onnx_export import export_onnx  # noqa: E402
from trt_lib.model.families import get_family  # noqa: E402
from trt_lib.model.profiles import Profile, UnetCall  # noqa: E402
from trt_lib.model.tiny_unets import make_unet  # noqa: E402
from trt_lib.store.engine_store import EngineEntry  # noqa: E402
from trt_lib.table import print_table  # noqa: E402

PROFILE = Profile.from_dict({"batch": [1, 1, 4], "height": [64, 64, 128], "width": [64, 64, 128],
                             "tokens": [75, 75, 150]})


class TimedRunner(OnnxRuntimeRunner):
    """The stand-in runner, timing its own ``infer`` so that callers' overhead can be separated out."""

    inner_seconds = 0.0

    def infer(self, feeds: Mapping[str, torch.Tensor], profile_index: int) -> torch.Tensor:
        t = time.perf_counter()
        try:
            return super().infer(feeds, profile_index)
        finally:
            self.inner_seconds += time.perf_counter() - t


def overhead_ms(runner: TimedRunner, call: Callable[[], torch.Tensor], calls: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of (wall time - runner infer time) per call, in ms."""
    for _ in range(20):
        call()
    samples = []
    for _ in range(repeats):
        runner.inner_seconds = 0.0
        t = time.perf_counter()
        for _ in range(calls):
            call()
        samples.append((time.perf_counter() - t - runner.inner_seconds) / calls * 1000)
    return statistics.median(samples)


def provider_forward(session: UnetSession, checkpoint: str) -> Callable | None:
    """The real provider (``TrtUnet.forward``) over the WebUI stand-in, or None where it is not importable."""
    sys.path.insert(0, str(ROOT / "tests" / "webui_stub"))
    try:
        from trt_webui import loaded_model
        from trt_webui.provider import TrtUnetOption
    except ImportError as e:
        print(f"provider row skipped: {e}")
        return None
    unet = TrtUnetOption(checkpoint, "", lambda name, loras: session).create_unet()
    unet.activate()
    loaded_model.checkpoint_name = lambda: checkpoint  # the stand-in has no loaded checkpoint
    return unet.forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    family = get_family("sd1")
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "unet.onnx"
        export_onnx(make_unet(family, tiny=True, seed=0), family, onnx, dtype=torch.float16)
        shapes = [family.engine_shapes(PROFILE)]
        runner = TimedRunner(onnx, family.input_names, family.output_name, shapes)
        entry = EngineEntry(id="bench", checkpoint="bench", checkpoint_hash="0", family=family.name,
                            profiles=[PROFILE.to_dict()], backend="onnxruntime", backend_version="-",
                            compute_capabilities=[], engine_file="", engine_bytes=0)
        session = UnetSession([entry], family, "bench", lambda e: runner)
        rows = [["call (rows, px, tokens)", "runner direct ms", "UNet session ms", "provider ms",
                 "provider - runner ms"]]
        forward = provider_forward(session, "bench")
        for call in (UnetCall(2, 8, 8, 77), UnetCall(1, 16, 16, 154)):
            feeds = family.example_inputs(call.batch, call.height, call.width, call.context_len,
                                          dtype=torch.float16, device=device)
            x, t, c = (feeds[n] for n in family.input_names)
            direct = overhead_ms(runner, partial(runner, feeds), args.calls)
            via_session = overhead_ms(runner, partial(session, x, t, c), args.calls)
            via_provider = overhead_ms(runner, partial(forward, x, t, c), args.calls) if forward else float("nan")
            rows.append([f"{call.batch}, {call.width}x{call.height}, {call.tokens}", f"{direct:.4f}",
                         f"{via_session:.4f}", f"{via_provider:.4f}", f"{via_provider - direct:.4f}"])
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}; host time per call, "
          f"median of 5 x {args.calls} calls, runner infer excluded")
    print_table(rows)


if __name__ == "__main__":
    main()
