"""What CUDA graph replay (trt_lib.engines.cuda_graphs, used by the full TensorRT runner) saves per UNet call.

Engines cannot run on the benchmark GPUs, so the enqueued work here is the same UNet in PyTorch (fp16):
the numbers show the launch time a graph removes and the cost of copying inputs into its buffers, not
TensorRT's own speed.

    python bench/graph_bench.py --calls 50
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trt_lib.engines.cuda_graphs import GraphCache  # noqa: E402
from trt_lib.model.families import get_family  # noqa: E402
from trt_lib.model.tiny_unets import make_unet  # noqa: E402
from trt_lib.table import print_table  # noqa: E402


def ms_per_call(fn: Callable[[], object], calls: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1000


def row(unet: torch.nn.Module, label: str, batch: int, size: int, calls: int) -> list[str]:
    family = get_family("sd1")
    feeds = family.example_inputs(batch, size, size, 77, dtype=torch.float16, device="cuda")
    x = [feeds[n] for n in family.input_names]
    cache = GraphCache()
    eager = ms_per_call(lambda: unet(*x), calls)
    graphed = ms_per_call(lambda: cache.run("call", x, lambda t: unet(*t)), calls)
    return [label, f"{batch}, {size}", f"{eager:.3f}", f"{graphed:.3f}", f"{eager - graphed:.3f}"]


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    rows = [["UNet", "rows, px", "eager ms", "graph replay ms", "saved ms"]]
    tiny = make_unet("sd1", tiny=True, dtype=torch.float16).cuda().eval()
    rows.append(row(tiny, "tiny", 2, 64, args.calls))
    del tiny
    full = make_unet("sd1", tiny=False, dtype=torch.float16).cuda().eval()
    rows += [row(full, "SD 1.5 size", batch, 512, args.calls) for batch in (2, 8)]
    print(f"device: {torch.cuda.get_device_name()}; PyTorch UNet as the enqueued work, fp16, "
          f"{args.calls} calls each")
    print_table(rows)


if __name__ == "__main__":
    main()
