"""``python -m trt_lib demo``: the whole path on a built-in tiny UNet, on a machine without a GPU.

Makes a tiny real-architecture UNet of a family, exports it to ONNX, builds a TensorRT-for-RTX engine for a
compute capability, records it in an engine store (kept, ``--out``), checks the engine's own ONNX on the
ONNX Runtime reference runtime against PyTorch at several shapes of its profile and prints a table that says what
built, what ran and why.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .backends import get_backend
from .backends.trt10 import gpu_capability
from .engines.onnx_runtime import reference_runner
from .jobs.pipeline import BuildRequest, build_engine
from .model.families import get_family
from .model.profiles import Profile, UnetCall, context_len
from .model.tiny_unets import make_unet
from .store.engine_store import EngineStore
from .table import print_table

DEMO_PROFILE = {"batch": [1, 1, 2], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 150]}
DEMO_CALLS = ((1, 64, 64, 75), (1, 128, 64, 150), (2, 128, 128, 75))
"""(batch size in images, height px, width px, prompt tokens): the profile's corners and a middle."""
DEFAULT_OUT = Path("out/demo")
DEFAULT_CAPABILITY = "8.9"


def build_target(requested: str | None) -> tuple[str, str]:
    """The compute capability to build for, and why that one."""
    if requested:
        return requested, "chosen with --compute-capability"
    gpu = gpu_capability()
    if gpu:
        return gpu, "this machine's GPU"
    return DEFAULT_CAPABILITY, "no GPU here: the demo's default (RTX 40xx); --compute-capability picks another"


def describe(profile: Profile) -> str:
    """A profile in the tab's words: sizes in px, batch size in images, prompt tokens."""
    return (f"{profile.width}x{profile.height} px, batch size {profile.batch} images, "
            f"{profile.tokens} prompt tokens")


def demo(family_name: str, folder: Path, compute_capability: str | None,
         dtype: torch.dtype) -> tuple[list[list[str]], list[list[str]]]:
    """Build and check the demo engine: the table of calls, and the table of what built, what ran and why."""
    family = get_family(family_name)
    unet = make_unet(family, tiny=True, seed=0).eval()
    profile = Profile.from_dict(DEMO_PROFILE)
    target, why_target = build_target(compute_capability)
    store = EngineStore(folder)
    request = BuildRequest(f"demo-{family.name}", "0" * 10, family, [profile], backend="tensorrt_rtx",
                           compute_capability=target, dtype=dtype)
    t0 = time.perf_counter()
    entry = build_engine(unet, request, store)
    total = time.perf_counter() - t0
    runner = reference_runner(store, entry)
    name = runner.runtime_name
    calls = [["batch size", "size", "prompt tokens", "rel. error vs PyTorch", f"{name}, ms"]]
    for images, height, width, tokens in DEMO_CALLS:
        # the WebUI sends cond and uncond together: two UNet rows per image
        call = UnetCall(2 * images, height // 8, width // 8, context_len(tokens))
        feeds = family.example_inputs(call.batch, call.height, call.width, call.context_len, seed=1)
        with torch.no_grad():
            ref = unet(*[feeds[n] for n in family.input_names[:3]], **({"y": feeds["y"]} if "y" in feeds else {}))
        t = time.perf_counter()
        out = runner({k: v.to(dtype) for k, v in feeds.items()}).float()
        ms = (time.perf_counter() - t) * 1000
        err = float((out - ref).norm() / ref.norm())
        calls.append([f"{images} image{'s' * (images > 1)}", f"{width}x{height} px", str(tokens), f"{err:.2e}",
                      f"{ms:.1f}"])
    onnx = store.onnx_path(entry)
    onnx_bytes = sum(f.stat().st_size for f in onnx.parent.iterdir()) if onnx else 0
    why_reference = ("no CUDA GPU here: no TensorRT runtime can run the engine" if gpu_capability() is None
                    else "the demo checks on the CPU; the WebUI runs the engine itself on the GPU")
    facts = [["what", "", "size"],
             ["model", f"tiny {family.label} UNet (random weights), {entry.dtype}", ""],
             ["profile", describe(profile), ""],
             ["built", f"{get_backend(entry.backend).label} {entry.backend_version} engine, compute capability "
                       f"{', '.join(entry.compute_capabilities)}", f"{entry.engine_bytes / 2**20:.2f} MB"],
             ["  why that one", why_target, ""],
             ["ran", f"{name} on the engine's own ONNX, within its profile", f"{onnx_bytes / 2**20:.2f} MB"],
             ["  why", why_reference, ""],
             ["export + build", f"{total - entry.build_seconds:.1f} s + {entry.build_seconds:.1f} s", ""],
             ["engine folder (kept)", str(store.folder.resolve()), f"{len(store.entries())} engine(s)"]]
    return calls, facts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trt_lib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="export, build and check a tiny UNet (no GPU needed)")
    d.add_argument("--family", default="sd1", help="model family (models/families/*.json)")
    d.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"engine folder, kept (default: {DEFAULT_OUT})")
    d.add_argument("--compute-capability", default=None,
                   help=f"target GPU for TensorRT for RTX (default: this GPU's, else {DEFAULT_CAPABILITY})")
    d.add_argument("--fp32", action="store_true", help="export in fp32 instead of fp16")
    args = parser.parse_args(argv)
    calls, facts = demo(args.family, args.out, args.compute_capability,
                        torch.float32 if args.fp32 else torch.float16)
    print_table(calls)
    print()
    print_table(facts)


if __name__ == "__main__":
    main()
