"""Run the extension inside the WebUI stand-in (tests/webui_stub), loaded the way the WebUI loads it.

Each test gets a fresh WebUI: the stand-in's ``modules`` and the extension's ``trt_webui`` are imported
anew, ``scripts/trt_unet.py`` is run by the stand-in's script loader with the extension root first on
``sys.path`` only while it runs, and models and engines live in a temporary data folder.

Engines here are entries in the extension's engine store whose ONNX export is real (tiny UNets, fp32) and
whose engine file is a placeholder (exports from tests/conftest.py's session cache): they run through the
ONNX Runtime stand-in, and the extension's runtime check is patched so that they count as usable here.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from fastapi import FastAPI

STUB = Path(__file__).resolve().parent.parent / "webui_stub"
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(STUB))  # the WebUI's own folder is on sys.path: `modules`, `launch`
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # trt_lib for the tests' own use (tiny UNets, exports, the store)

from tests import lora_files  # noqa: E402
from trt_lib.engines.onnx_runtime import reference_runner  # noqa: E402
from trt_lib.model.families import get_family  # noqa: E402
from trt_lib.model.profiles import Profile  # noqa: E402
from trt_lib.model.tiny_unets import make_unet  # noqa: E402
from trt_lib.store.engine_store import EngineEntry, Runtime  # noqa: E402

STAND_IN = Runtime("tensorrt", "stand-in", None)
"""What the patched runtime check reports; the registered entries carry the same backend and version."""

_FRESH = ("modules", "trt_webui", "launch", "trt_unet.py")


def _forget_webui() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _FRESH:
            del sys.modules[name]


class Webui:
    """One stand-in WebUI process with the extension loaded; the stand-in's modules as attributes."""

    def __init__(self, data: Path, exported_onnx: Callable[[str, torch.dtype], Path],
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.data = data
        self.exported_onnx = exported_onnx
        self.monkeypatch = monkeypatch
        self.paths = importlib.import_module("modules.paths")
        self.paths.data_path = str(data)
        self.paths.models_path = str(data / "models")
        for name in ("shared", "sd_unet", "sd_models", "script_callbacks", "scripts", "processing", "errors",
                     "devices", "shared_items", "call_queue", "prompt_parser"):
            setattr(self, name, importlib.import_module(f"modules.{name}"))
        importlib.import_module("modules.extra_networks").register_default_extra_networks()  # initialize_rest
        self.shared.loaded_hypernetworks.clear()
        self.shared.hypernetworks.clear()
        self.scripts.load_scripts([str(ROOT)])
        self.scripts.scripts_txt2img.initialize_scripts(is_img2img=False)
        self.scripts.scripts_img2img.initialize_scripts(is_img2img=True)
        self.ext_module = sys.modules["trt_webui.extension"]
        self.EXT = self.ext_module.EXT
        self.sd_unet.list_unets()
        self.script_callbacks.ui_settings_callback()  # as create_ui does; never under --nowebui

    def module(self, name: str) -> ModuleType:
        return importlib.import_module(name)

    def start(self, *argv: str) -> FastAPI:
        """Start the stand-in's server with these command-line flags (webui.py ``start``): the app it serves,
        with the WebUI's API on it under ``--api`` or ``--nowebui`` and the ``app_started`` callbacks fired."""
        cmd_args = importlib.import_module("modules.cmd_args")
        vars(self.shared.cmd_opts).update(vars(cmd_args.parser.parse_args(list(argv))))
        return self.module("webui").start()

    # -- checkpoints -------------------------------------------------------------------------------------

    def add_checkpoint(self, name: str, family: str, seed: int = 0) -> Any:
        fam = get_family(family)
        spec = self.sd_models.CheckpointSpec(
            make_unet=lambda: make_unet(fam, seed=seed), context_dim=fam.traits.context_dim,
            adm_dim=fam.traits.adm_dim, in_channels=fam.traits.in_channels, parameterization=fam.traits.prediction)
        return self.sd_models.add_checkpoint(name, spec, f"{name}|{family}|seed {seed}".encode())

    def load(self, name: str) -> Any:
        """Select a checkpoint in the checkpoint dropdown (``sd_model_checkpoint``) and load it."""
        info = self.sd_models.get_closet_checkpoint_match(name)
        self.shared.opts.set("sd_model_checkpoint", info.title)
        return self.sd_models.reload_model_weights()

    # -- engines -----------------------------------------------------------------------------------------

    def use_stand_in(self) -> None:
        """Engines of the stand-in runtime count as usable and run on ONNX Runtime."""
        self.monkeypatch.setattr(self.EXT, "runtime", lambda: STAND_IN)
        self.monkeypatch.setattr(self.EXT, "runner_factory", reference_runner)

    def add_engine(self, checkpoint: str, family: str, profile: Profile | dict,
                   loras: list[dict] | None = None, onnx: Path | None = None) -> EngineEntry:
        """Record an engine for ``checkpoint`` (made with seed 0) whose ONNX is the real export of its UNet, or
        ``onnx`` (another export, its folder copied into the store)."""
        fam = get_family(family)
        profile = profile if isinstance(profile, Profile) else Profile.from_dict(profile)
        info = self.sd_models.get_closet_checkpoint_match(checkpoint)
        info.calculate_shorthash()  # what a build records: the full sha256 of the checkpoint file
        store = self.EXT.store
        source = onnx or self.exported_onnx(family, torch.float32)
        onnx_dir = f"onnx/{family}" if onnx is None else f"onnx/{onnx.parent.name}"
        if not (store.folder / onnx_dir).is_dir():
            shutil.copytree(source.parent, store.folder / onnx_dir)
        engine_id = store.new_id(info.model_name)
        store.folder.mkdir(parents=True, exist_ok=True)
        (store.folder / f"{engine_id}.engine").write_bytes(b"placeholder engine: runs through its ONNX")
        return store.add(EngineEntry(
            id=engine_id, checkpoint=info.model_name, checkpoint_hash=info.sha256, family=fam.name,
            profiles=[profile.to_dict()], backend=STAND_IN.backend, backend_version=STAND_IN.backend_version,
            compute_capabilities=[], engine_file=f"{engine_id}.engine", engine_bytes=0,
            onnx_file=f"{onnx_dir}/{source.name}", dtype="float32", loras=list(loras or [])))

    def with_engine(self, checkpoint: str, family: str, profile: Profile | dict) -> Webui:
        """Add ``checkpoint``, load it and give it a stand-in engine with ``profile``, listed in the dropdown."""
        self.add_checkpoint(checkpoint, family)
        self.load(checkpoint)
        self.use_stand_in()
        self.add_engine(checkpoint, family, profile)
        self.sd_unet.list_unets()
        return self

    # -- jobs --------------------------------------------------------------------------------------------

    def txt2img(self, **kwargs: Any) -> Any:
        p = self.processing.StableDiffusionProcessingTxt2Img(sd_model=self.shared.sd_model, **kwargs)
        p.scripts = self.scripts.scripts_txt2img
        return self.processing.process_images(p)

    def img2img(self, inner: bool = False, **kwargs: Any) -> Any:
        """``inner``: a job another extension runs inside a job, like ADetailer's inpainting passes, which
        get a script runner without this extension's always-on script."""
        p = self.processing.StableDiffusionProcessingImg2Img(sd_model=self.shared.sd_model, **kwargs)
        p.scripts = None if inner else self.scripts.scripts_img2img
        return self.processing.process_images(p)

    def unet(self) -> torch.nn.Module:
        return self.shared.sd_model.model.diffusion_model


@pytest.fixture
def webui(tmp_path: Path, exported_onnx: Callable[[str, torch.dtype], Path],
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Webui]:
    _forget_webui()
    yield Webui(tmp_path, exported_onnx, monkeypatch)
    _forget_webui()


LORA_STUB = STUB / "lora"
_LORA_MODULES = ("networks", "network", "network_lora", "network_hada", "lyco_helpers", "extra_networks_lora",
                 "lora_script", "lora_patches")


@pytest.fixture
def lora_webui(webui):
    """The stand-in with the built-in Lora extension loaded and LoRA files (made for the seed-0 UNets) on disk."""
    folder = Path(webui.paths.models_path) / "Lora"
    for family in ("sd1", "sdxl"):
        unet = make_unet(family)
        names = lora_files.layer_names(unet)
        webui.lora_tensors = getattr(webui, "lora_tensors", {})
        for name, tensors in {f"{family}_a": lora_files.make_lora(unet, names[:2], seed=1),
                              f"{family}_b": lora_files.make_lora(unet, names[1:], seed=2),
                              f"{family}_loha": lora_files.make_lora(unet, names, seed=3, loha=True)}.items():
            lora_files.write(folder, name, tensors)
            webui.lora_tensors[name] = tensors
    sys.path.insert(0, str(LORA_STUB))
    try:
        lora_script = importlib.import_module("lora_script")  # the WebUI imports it at start: layers patched
        lora_script.before_ui()  # as script_callbacks.before_ui_callback() does before the UI is made
        webui.networks = sys.modules["networks"]
        yield webui
        lora_script.unload()  # as on_script_unloaded does
    finally:
        sys.path.remove(str(LORA_STUB))
        for name in _LORA_MODULES:
            sys.modules.pop(name, None)
