"""LoRA refit preparation time: merging a prompt's LoRA set and turning it into refit arrays, per switch.

What is timed is everything the product does before the engine's refit call when the prompt's LoRA set
changes (``trt_webui.prompt_loras.before_sampling`` -> ``LoraRefitter.want`` + ``LoraRefitter.sync``): the
WebUI's Lora code merges the set into the loaded UNet's layers it touches (on the weights' device, with its
CPU backups; the first merge of a layer also makes that backup), the merged weights are copied to the CPU,
the UNet is restored, and ``refit_arrays`` turns the weights into arrays named as the engine's ONNX
initializers. The refit call itself gets a recording stand-in runner, so engines are not needed. Loading the
LoRA files is not timed: the WebUI loads the prompt's networks before sampling anyway (for the text encoder).

The merge is the product's own: ``prompt_loras.merge`` over the WebUI stand-in (tests/webui_stub) with the
stand-in of the WebUI's built-in Lora extension (tests/webui_stub/lora, which mirrors the WebUI's merge),
with the stand-in's ``devices`` set to the UNet's device and dtype as the WebUI's are (fp16 LoRA modules on
the CPU, moved to the weights' device for each merge). UNets are real-size random-weight diffusers UNets
(``trt_lib.model.tiny_unets``), LoRAs are kohya-format files (``tests/lora_files.make_lora``) of rank 32, A and B
with the same layers and other values, switched base -> A -> B -> base:

* ``lora``: every Linear / 1x1 Conv2d of the transformer blocks (attn1/attn2 to_q, to_k, to_v, to_out, ff,
  proj_in, proj_out), kohya's default LoRA;
* ``locon``: those plus the convolutions and time projections of the resnet blocks and the down/upsamplers,
  kohya's LoCon (``conv_dim``).

Weight map: by default built from the UNet's ``state_dict`` (initializer name = ``state_dict`` key, dtype
and shape of the tensor) instead of exporting real-size UNets (25-40 s each). That is the export's map by
construction: ``trt_lib.export.onnx_export._weight_map`` keeps only initializers whose name is a ``state_dict`` key and
records ``WeightRef(tensor.name, ...)`` for them, with the export dtype (the UNet's here) and the parameter's
shape (it refuses reshaped ones), and the export names every parameter by its key (no constant folding,
``keep_initializers_as_inputs``). ``--weight-map export`` exports instead and checks that both maps are
equal (run with ``--tiny`` to prove it cheaply). Targets (issue): under 2 s per switch for SD 1.5, 5 s for
SDXL, preparation only.

    python bench/refit_bench.py --families sd1,sdxl
    python bench/refit_bench.py --tiny --weight-map export   # CPU check that the script works
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "tests" / "webui_stub", ROOT / "tests" / "webui_stub" / "lora", ROOT / "tests"):
    sys.path.insert(0, str(folder))

from trt_lib.engines.lora_refit import LoraRefitter, LoraUse, lora_key, parameter_keys  # noqa: E402
from trt_lib.export.onnx_export import WeightRef, export_onnx, load_weight_map  # noqa: E402
from trt_lib.model.families import Family, get_family  # noqa: E402
from trt_lib.model.tiny_unets import make_unet  # noqa: E402
from trt_lib.store.engine_store import EngineEntry  # noqa: E402
from trt_lib.table import print_table  # noqa: E402

TARGET_S = {"sd1": 2.0, "sdxl": 5.0}
ATTENTION_BLOCKS = ("Transformer2DModel",)
CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
CASES = {"lora": ATTENTION_BLOCKS, "locon": ATTENTION_BLOCKS + CONV_BLOCKS}
MERGED = (torch.nn.Linear, torch.nn.Conv2d)


def lora_layer_names(unet: torch.nn.Module, blocks: tuple[str, ...]) -> list[str]:
    """Every Linear and Conv2d inside the blocks of these classes, as kohya's LoRA/LoCon networks pick them."""
    names = []
    for block_name, block in unet.named_modules():
        if type(block).__name__ in blocks:
            names += [f"{block_name}.{sub}" for sub, m in block.named_modules() if sub and isinstance(m, MERGED)]
    return list(dict.fromkeys(names))


def state_dict_weight_map(unet: torch.nn.Module) -> dict[str, WeightRef]:
    """The export's weight map without an export (see the module docstring for why it is the same)."""
    return {k: WeightRef(k, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for k, t in unet.state_dict().items()}


def exported_weight_map(unet: torch.nn.Module, family: Family, folder: Path) -> dict[str, WeightRef]:
    """The weight map of a real export, checked against :func:`state_dict_weight_map`."""
    dtype = next(unet.parameters()).dtype
    path = export_onnx(unet, family, folder / f"{family.name}.onnx", dtype=dtype).path
    exported, direct = load_weight_map(path), state_dict_weight_map(unet)
    if exported != direct:
        diff = sorted(set(exported.items()) ^ set(direct.items()))[:3]
        raise SystemExit(f"{family.name}: the export's weight map differs from the state_dict one, e.g. {diff}")
    print(f"{family.name}: the export's weight map equals the state_dict one ({len(exported)} weights)")
    path.unlink()
    return exported


class RecordingRunner:
    """Stands in for the engine runner: keeps the arrays of the last refit (the refit itself is not timed)."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def refit(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays


class Webui:
    """The WebUI stand-in with its Lora extension, the UNet on ``device``, LoRA files in ``folder``."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
        paths = importlib.import_module("modules.paths")
        paths.data_path = str(folder)
        paths.models_path = str(folder / "models")
        self.devices = importlib.import_module("modules.devices")
        self.devices.device, self.devices.dtype, self.devices.dtype_unet = device, dtype, dtype
        self.sd_models = importlib.import_module("modules.sd_models")
        self.shared = importlib.import_module("modules.shared")
        lora_script = importlib.import_module("lora_script")  # patches the layers, names them on model load
        lora_script.before_ui()
        self.undo = lora_script.unload
        self.networks = sys.modules["networks"]
        self.prompt_loras = importlib.import_module("trt_webui.prompt_loras")
        self.lora_folder = Path(self.networks.lora_dir())

    def load(self, family: Family, unet: torch.nn.Module) -> torch.nn.Module:
        traits = family.traits
        spec = self.sd_models.CheckpointSpec(make_unet=lambda: unet, context_dim=traits.context_dim,
                                             adm_dim=traits.adm_dim, in_channels=traits.in_channels)
        info = self.sd_models.add_checkpoint(f"{family.name}.safetensors", spec)
        return self.sd_models.load_model(info).model.diffusion_model

    def unload(self) -> None:
        self.networks.loaded_networks.clear()
        self.networks.networks_in_memory.clear()
        self.sd_models.model_data.sd_model = None
        self.sd_models.model_data.loaded_sd_models.clear()

    def activate(self, key: tuple[LoraUse, ...]) -> None:
        """What the WebUI does for the prompt before sampling: its LoRAs loaded (te multiplier 1)."""
        self.networks.load_networks([u.name for u in key], [1.0] * len(key), [u.weight for u in key],
                                    [u.dyn_dim for u in key])
        if self.prompt_loras.wanted() != key:
            raise SystemExit(f"the stand-in loaded {self.prompt_loras.wanted()}, not {key}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_case(webui: Webui, unet: torch.nn.Module, family: Family, case: str, weight_map: dict[str, WeightRef],
             args: argparse.Namespace, device: torch.device) -> list[list[str]]:
    import lora_files

    names = lora_layer_names(unet, CASES[case])
    touched = parameter_keys(unet, [unet.get_submodule(n) for n in names])
    start = time.perf_counter()
    file_dtype = next(unet.parameters()).dtype  # kohya saves LoRAs in the training dtype (fp16 usually)
    uses = {}
    for label, seed in (("A", 1), ("B", 2)):
        tensors = lora_files.make_lora(unet, names, rank=args.rank, alpha=args.rank / 2, seed=seed)
        path = lora_files.write(webui.lora_folder, f"{family.name}_{case}_{label}",
                                {k: v.to(file_dtype) for k, v in tensors.items()})
        uses[label] = lora_key([LoraUse(path.stem, 0.8)])
        del tensors
    webui.networks.list_available_networks()
    file_mb = sum((webui.lora_folder / f"{u[0].name}.safetensors").stat().st_size for u in uses.values()) / 1e6
    start_load = time.perf_counter()
    for key in uses.values():
        webui.activate(key)  # loads the files once, as the WebUI's prompt parsing does; not in the timings
    print(f"{family.name} {case}: {len(names)} layers, {len(touched)} tensors; LoRA files {file_mb:.0f} MB made in "
          f"{start_load - start:.1f} s, loaded by the WebUI's Lora code in {time.perf_counter() - start_load:.1f} s",
          flush=True)
    base = {k: v.detach().to("cpu", copy=True) for k, v in unet.state_dict().items() if k in touched}

    def merge(key, extra):  # the product's merge; the wait for the GPU's queue is part of it
        result = webui.prompt_loras.merge(key, extra)
        sync(device)
        return result

    entry = EngineEntry(id=f"bench-{family.name}", checkpoint=family.name, checkpoint_hash="0", family=family.name,
                        profiles=[family.default_preset.profile.to_dict()], backend="tensorrt",
                        backend_version="-", compute_capabilities=[], engine_file="", engine_bytes=0,
                        onnx_file=f"{family.name}.onnx", refittable=True, dtype=str(file_dtype).split(".")[-1])
    refitter = LoraRefitter(merge, lambda e: weight_map)
    runner = RecordingRunner()
    rows = []
    target = TARGET_S[family.name]
    held = "base"
    for cycle in range(1, args.cycles + 1):
        for label, key in (("A", uses["A"]), ("B", uses["B"]), ("base", ())):
            webui.activate(key)
            sync(device)
            t0 = time.perf_counter()
            refitter.want(key, [entry])
            report = refitter.sync(entry, runner)
            total = time.perf_counter() - t0 - report.refit_seconds
            arrays = runner.arrays
            if set(arrays) != touched:
                raise SystemExit(f"{held} -> {label}: {len(arrays)} arrays, expected the {len(touched)} touched")
            same = [np.array_equal(arrays[k], base[k].numpy()) for k in sorted(touched)]
            if label == "base" and not all(same):
                raise SystemExit(f"{held} -> base: {same.count(False)} arrays differ from the base weights")
            if label != "base" and not any(k.endswith(".weight") and not s for k, s in zip(sorted(touched), same)):
                raise SystemExit(f"{held} -> {label}: the LoRA changed no weight")
            merge_s = report.prepare_seconds
            mb = sum(a.nbytes for a in arrays.values()) / 1e6
            rows.append([family.name, case, len(names), f"{cycle}: {held} -> {label}", len(arrays), f"{mb:.0f}",
                         f"{merge_s:.3f}", f"{total - merge_s:.3f}", f"{total:.3f}", f"< {target:g}",
                         "yes" if total < target else "NO"])
            held = label
    restored = all(torch.equal(v.cpu(), base[k]) for k, v in unet.state_dict().items() if k in touched)
    print(f"{family.name} {case}: arrays for A/B cover exactly the touched weights, the last switch wrote the base "
          f"weights bit for bit, UNet restored bit for bit: {restored}", flush=True)
    if not restored:
        raise SystemExit("the UNet was not restored")
    for key in uses.values():
        (webui.lora_folder / f"{key[0].name}.safetensors").unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="sd1,sdxl")
    parser.add_argument("--cases", default="lora,locon")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--cycles", type=int, default=1, help="base -> A -> B -> base this many times")
    parser.add_argument("--weight-map", choices=("state-dict", "export"), default="state-dict")
    parser.add_argument("--tiny", action="store_true", help="tiny UNets on the CPU in fp32: checks the script")
    parser.add_argument("--unet-on", choices=("gpu", "cpu"), default="gpu",
                        help="cpu: where the WebUI keeps the PyTorch UNet while an engine is active (sd_unet "
                             "moves it off the GPU), so where the merge for a refit really runs")
    args = parser.parse_args()
    gpu = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.float16 if gpu else torch.float32
    if gpu:  # the WebUI has used cuBLAS long before a refit: keep its start-up out of the first merge
        torch.ones(64, 64, device=device, dtype=dtype) @ torch.ones(64, 64, device=device, dtype=dtype)
    else:
        torch.set_num_threads(min(torch.get_num_threads(), 4))
    rows = [["family", "LoRA", "LoRA layers", "switch", "changed tensors", "MB changed", "merge s", "arrays s",
             "total prep s", "target s", "met?"]]
    with tempfile.TemporaryDirectory() as tmp:
        webui = Webui(Path(tmp), device, dtype)
        try:
            for name in args.families.split(","):
                family = get_family(name)
                start = time.perf_counter()
                with device:  # made on the GPU directly: initialising real-size weights on the CPU is slow
                    unet = make_unet(family, tiny=args.tiny, dtype=dtype)
                unet = webui.load(family, unet)
                if args.unet_on == "cpu":
                    unet.to("cpu")
                sync(device)
                weights = sum(p.numel() * p.element_size() for p in unet.parameters()) / 1e9
                print(f"{name}: {weights:.2f} GB of {str(dtype).removeprefix('torch.')} weights on "
                      f"{next(unet.parameters()).device}, "
                      f"made in {time.perf_counter() - start:.1f} s", flush=True)
                weight_map = (exported_weight_map(unet, family, Path(tmp)) if args.weight_map == "export"
                              else state_dict_weight_map(unet))
                for case in args.cases.split(","):
                    rows += run_case(webui, unet, family, case, weight_map, args, device)
                webui.unload()
                del unet
                gc.collect()
                if gpu:
                    torch.cuda.empty_cache()
        finally:
            webui.undo()
    print(f"device: {torch.cuda.get_device_name() if gpu else 'CPU'}, torch {torch.__version__}; rank {args.rank}, "
          f"LoRA weight 0.8; weight map from {args.weight_map}; times exclude the engine's refit call")
    print_table(rows)


if __name__ == "__main__":
    main()
