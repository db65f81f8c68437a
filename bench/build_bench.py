"""Export and build real-size, random-weight UNets; print time, peak GPU memory, host memory and sizes.

Stages (``--stage``, comma-separated; default ``export,usable``):

- ``export``: a plain ``torch.onnx.export`` of the fp16 UNet (batch 2, 64x64 latent, 77 tokens, opset 17,
  the family's dynamic axes, the exporter's defaults otherwise) and this project's export, side by side and
  alternated, then a second checkpoint of the family (other weights) exported with the first one's graph kept.
- ``usable``: click → usable engine through the pipeline the tab runs (export, TensorRT for RTX build, manifest
  record) for a first and a second checkpoint, with the issue's targets.
- ``disk``: bytes on disk for 1, 2 and 4 profiles.

Run on a machine with a CUDA GPU (export) and TensorRT for RTX (build; it targets a chosen compute capability
ahead of time, so it also runs where engines cannot execute)::

    python bench/build_bench.py --families sd1,sdxl --work /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trt_lib.backends import get_backend  # noqa: E402
from trt_lib.errors import BuildError  # noqa: E402
from trt_lib.export.onnx_export import export_onnx  # noqa: E402
from trt_lib.jobs.pipeline import BuildRequest, build_stage, export_stage  # noqa: E402
from trt_lib.model.families import Family, get_family  # noqa: E402
from trt_lib.model.profiles import CONTEXT_PER_CHUNK, Profile  # noqa: E402
from trt_lib.model.tiny_unets import make_unet  # noqa: E402
from trt_lib.store.engine_store import EngineStore  # noqa: E402
from trt_lib.table import print_table  # noqa: E402

GB = 2**30
BUILD_PRESET = {"sd1": "dynamic-512-768", "sdxl": "static-1024"}
"""The issue's targets: SD1.5 dynamic default (512-768, batch 1-4, 150 tokens); SDXL 1024 static."""


class RssPeak:
    """Samples this process's resident memory in a thread: host RAM peaks are short and ru_maxrss never resets."""

    def __init__(self, every: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process()
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def preset_profile(family: Family) -> Profile:
    return family.preset(BUILD_PRESET.get(family.name, family.default_preset.name)).profile


TARGETS = {("sd1", "first"): 45.0, ("sd1", "second"): 35.0, ("sdxl", "first"): 110.0}
"""Click → usable on the H200 machine, seconds (issue 15)."""


def gpu() -> bool:
    return torch.cuda.is_available()


def new_unet(family: Family, tiny: bool, seed: int) -> torch.nn.Module:
    """The WebUI's loaded UNet: fp16 on the GPU (fp32 on a CPU, where this only checks the script), made there."""
    with torch.device("cuda" if gpu() else "cpu"):
        return make_unet(family, tiny=tiny, seed=seed, dtype=torch.float16 if gpu() else torch.float32).eval()


def measured(weights: int, fn: Callable[..., object], *args: object, **kwargs: object) -> dict:
    """Seconds, peak GPU memory and host RAM over the base while ``fn(*args, **kwargs)`` runs; its result as
    ``"result"``."""
    if gpu():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with RssPeak() as rss:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        if gpu():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"s": seconds, "peak_gpu_gib": torch.cuda.max_memory_allocated() / GB if gpu() else 0.0,
            "weights_gib": weights / GB, "host_ram_over_base_gib": (rss.peak - rss.base) / GB,
            "host_x_weights": (rss.peak - rss.base) / weights, "result": result}


def plain_export(unet: torch.nn.Module, family: Family, out: Path) -> None:
    """What a plain ``torch.onnx.export`` of the UNet looks like (the issue's baseline)."""
    dtype = next(unet.parameters()).dtype
    inputs = family.example_inputs(2, 512, 512, CONTEXT_PER_CHUNK, dtype=dtype, device=next(unet.parameters()).device)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(unet, tuple(inputs[n] for n in family.input_names), str(out), dynamo=False,
                          input_names=list(family.input_names), output_names=[family.output_name],
                          dynamic_axes=family.dynamic_axes(), opset_version=17)


def warm_up(unet: torch.nn.Module, family: Family) -> None:
    """One smallest-shape forward, as the WebUI has run one before any export (it computes the empty prompt's
    conds at load, and samples): CUDA's libraries then hold their workspaces, which are not the export's."""
    param = next(unet.parameters())
    inputs = family.example_inputs(1, 64, 64, CONTEXT_PER_CHUNK, dtype=param.dtype, device=param.device)
    with torch.no_grad():
        unet(*(inputs[n] for n in family.input_names))


def export_rows(family: Family, work: Path, tiny: bool, repeats: int, warm: bool = False) -> list[dict]:
    """Plain export and ours, alternated, then a second checkpoint with the first one's graph kept; with ``warm``,
    after one forward of the UNet."""
    unet = new_unet(family, tiny, seed=0)
    if warm:
        warm_up(unet, family)
    weights = sum(p.numel() * p.element_size() for p in unet.parameters())
    dtype = next(unet.parameters()).dtype
    folder = work / family.name
    rows = []
    for run in range(1, repeats + 1):
        for method in ("plain torch.onnx.export", "ours, first checkpoint"):
            shutil.rmtree(folder, ignore_errors=True)
            (folder / "out").mkdir(parents=True)
            out = folder / "out" / "unet.onnx"
            if method.startswith("plain"):
                row = measured(weights, plain_export, unet, family, out)
            else:
                row = measured(weights, export_onnx, unet, family, out, dtype=dtype, graph_cache=folder / "graphs")
            del row["result"]
            rows.append({"family": family.name, "method": method, "run": run, **row,
                         "onnx_gib": folder_bytes(folder / "out") / GB})
    unet = None  # the second checkpoint replaces the first, as in the WebUI
    second = new_unet(family, tiny, seed=1)
    if warm:
        warm_up(second, family)
    out = folder / "second" / "unet.onnx"
    row = measured(weights, export_onnx, second, family, out, dtype=dtype, graph_cache=folder / "graphs")
    reused = row.pop("result").reused_graph
    method = f"ours, second checkpoint ({'graph reused' if reused else 'NOT reused'})"
    rows.append({"family": family.name, "method": method, "run": 1, **row, "onnx_gib": folder_bytes(out.parent) / GB})
    return rows


def usable_rows(family: Family, work: Path, tiny: bool, backend: str, cc: str) -> list[dict]:
    """Click → usable engine for a first and a second checkpoint of the family, through the tab's pipeline."""
    store = EngineStore(work / f"store-{family.name}")
    shutil.rmtree(store.folder, ignore_errors=True)
    rows = []
    for checkpoint, seed in (("first", 0), ("second", 1)):
        unet = new_unet(family, tiny, seed)
        request = BuildRequest(f"{family.name}-{checkpoint}", f"hash{seed}", family, [preset_profile(family)],
                               backend=backend, compute_capability=cc, dtype=next(unet.parameters()).dtype)
        start = time.perf_counter()
        onnx_path = export_stage(unet, request, store, device=next(unet.parameters()).device)
        exported = time.perf_counter()
        entry = build_stage(onnx_path, request, store)
        done = time.perf_counter()
        target = TARGETS.get((family.name, checkpoint))
        rows.append({"family": family.name, "checkpoint": checkpoint, "preset": BUILD_PRESET.get(family.name, ""),
                     "export_s": exported - start, "build_s": done - exported, "click_to_usable_s": done - start,
                     "target_s": target or float("nan"),
                     "met": "" if target is None else ("yes" if done - start <= target else "no"),
                     "engine_gib": entry.engine_bytes / GB})
        del unet
        if gpu():
            torch.cuda.empty_cache()
    return rows


def bench_build(family: Family, work: Path, backend: str, cc: str, profiles: list[Profile], tag: str,
                strip: bool = False) -> dict:
    onnx = work / family.name / "unet.onnx"
    engine = work / family.name / f"{tag}.engine"
    report = get_backend(backend).build(
        onnx, engine, [family.engine_shapes(p) for p in profiles], compute_capability=cc, refit=False,
        strip_weights=strip, progress=None, cancel=None, cache_dir=work / "cache")
    return {"family": family.name, "engine": tag, "profiles": len(profiles), "stripped": report.weight_stripped,
            "build_s": report.seconds, "engine_gb": report.engine_bytes / GB, "backend": report.backend,
            "version": report.backend_version}


def disk_rows(family: Family, work: Path, backend: str, cc: str) -> list[dict]:
    """Bytes on disk for 1, 2 and 4 profiles: one engine holding k profiles, and k weight-stripped engines
    sharing the ONNX weights."""
    presets = [p.profile for p in family.presets][:4]
    rows = []
    for k in (1, 2, 4):
        rows.append(bench_build(family, work, backend, cc, presets[:k], f"multi{k}"))
    for i, prof in enumerate(presets):
        try:
            rows.append(bench_build(family, work, backend, cc, [prof], f"stripped{i + 1}", strip=True))
        except BuildError as e:  # TensorRT for RTX 1.7 needs CUDA for these; say what happened in the table
            rows.append({**rows[0], "engine": f"stripped{i + 1}", "profiles": 1, "stripped": f"failed: {e}"[:90],
                         "build_s": 0.0, "engine_gb": 0.0})
            break
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="sd1,sdxl")
    parser.add_argument("--work", type=Path, default=Path("/tmp/trt-bench"))
    parser.add_argument("--stage", default="export,usable", help="export, usable, disk (comma-separated)")
    parser.add_argument("--export-families", default="sd1", help="families for the plain-vs-ours export rows")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warm", action="store_true", help="export rows after one forward of the UNet, as in a "
                        "WebUI that has loaded the checkpoint (CUDA libraries' workspaces already allocated)")
    parser.add_argument("--backend", default="tensorrt_rtx")
    parser.add_argument("--compute-capability", default="8.9")
    parser.add_argument("--tiny", action="store_true", help="tiny UNets: a quick check of the script itself")
    args = parser.parse_args()
    stages = set(args.stage.split(","))
    families = [get_family(n) for n in args.families.split(",")]
    results = {}
    if "export" in stages:
        results["export"] = [r for n in args.export_families.split(",")
                             for r in export_rows(get_family(n), args.work, args.tiny, args.repeats, args.warm)]
    if "usable" in stages:
        results["click to usable"] = [r for f in families for r in usable_rows(f, args.work, args.tiny, args.backend,
                                                                               args.compute_capability)]
    if "disk" in stages:
        unet = new_unet(families[0], args.tiny, 0)
        export_onnx(unet, families[0], args.work / families[0].name / "unet.onnx",
                    dtype=next(unet.parameters()).dtype)
        results["disk"] = disk_rows(families[0], args.work, args.backend, args.compute_capability)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"GPU: {torch.cuda.get_device_name() if gpu() else 'none'}; torch {torch.__version__}; "
          f"{time.strftime('%Y-%m-%d')}")
    for name, rows in results.items():
        print(f"\n{name}")
        print_table([list(rows[0])] + [[f"{v:.2f}" if isinstance(v, float) else v for v in r.values()]
                                       for r in rows])


if __name__ == "__main__":
    main()
