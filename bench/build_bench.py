"""Export and build real-size, random-weight UNets; print time, peak GPU memory, host memory and sizes.

Run on a machine with a CUDA GPU (export) and TensorRT for RTX (build); the build targets a chosen compute
capability ahead of time, so it also runs where engines cannot execute. Stages can run separately
(``--stage export`` then ``--stage build`` over the same ``--work`` folder), because exporting needs the GPU
and building needs the TensorRT package, which may live on different machines.

    python bench/build_bench.py --families sd1,sdxl --work /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trt_lib.backends import get_backend  # noqa: E402
from trt_lib.errors import BuildError  # noqa: E402
from trt_lib.export import export_onnx  # noqa: E402
from trt_lib.families import Family, get_family  # noqa: E402
from trt_lib.profiles import Profile  # noqa: E402
from trt_lib.table import print_table  # noqa: E402
from trt_lib.tiny_unets import make_unet  # noqa: E402

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


def bench_export(family: Family, work: Path, tiny: bool) -> dict:
    gpu = torch.cuda.is_available()
    dtype = torch.float16 if gpu else torch.float32  # a CPU run only checks that the script works
    unet = make_unet(family, tiny=tiny, seed=0, dtype=dtype).to("cuda" if gpu else "cpu").eval()
    weights = sum(p.numel() * p.element_size() for p in unet.parameters())
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    out = work / family.name / "unet.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    with RssPeak() as rss:
        report = export_onnx(unet, family, out, dtype=dtype,
                             device=next(unet.parameters()).device)
    row = {"family": family.name, "weights_gb": weights / GB, "export_s": report.seconds,
           "peak_vram_gb": torch.cuda.max_memory_allocated() / GB if gpu else 0.0,
           "peak_reserved_gb": torch.cuda.max_memory_reserved() / GB if gpu else 0.0,
           "host_ram_over_base_gb": (rss.peak - rss.base) / GB, "onnx_gb": folder_bytes(out.parent) / GB}
    del unet
    if gpu:
        torch.cuda.empty_cache()
    return row


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
    parser.add_argument("--stage", choices=("export", "build", "disk", "all"), default="all")
    parser.add_argument("--backend", default="tensorrt_rtx")
    parser.add_argument("--compute-capability", default="8.9")
    parser.add_argument("--tiny", action="store_true", help="tiny UNets: a quick check of the script itself")
    args = parser.parse_args()
    os.environ.setdefault("POLYGRAPHY_USE_TENSORRT_RTX", "1")
    families = [get_family(n) for n in args.families.split(",")]
    results_file = args.work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if args.stage in ("export", "all"):
        results["export"] = [bench_export(f, args.work, args.tiny) for f in families]
    if args.stage in ("build", "all"):
        results["build"] = [bench_build(f, args.work, args.backend, args.compute_capability, [preset_profile(f)],
                                        "preset") for f in families]
    if args.stage in ("disk", "all"):
        results["disk"] = disk_rows(families[0], args.work, args.backend, args.compute_capability)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(results, indent=1))
    print(f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}; torch {torch.__version__}")
    for name, rows in results.items():
        print(f"\n{name}")
        print_table([list(rows[0])] + [[f"{v:.2f}" if isinstance(v, float) else v for v in r.values()]
                                       for r in rows])


if __name__ == "__main__":
    main()
