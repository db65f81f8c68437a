"""Loading the extension into the WebUI: without TensorRT, settings, the sd_unet dropdown, the tab."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fake_tensorrt import fake_tensorrt

SMALL = {"batch": [1, 1, 2], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 75]}


@pytest.mark.catalogue("install")
def test_loads_without_tensorrt_and_the_tab_says_what_is_missing(webui):
    assert webui.errors.reported == []
    assert [type(s).__name__ for s in webui.scripts.scripts_txt2img.alwayson_scripts] == ["TensorRTScript"]
    tabs = webui.script_callbacks.ui_tabs_callback()
    assert [(name, elem) for _, name, elem in tabs] == [("TensorRT", "tensorrt")]
    status = webui.module("trt_webui.tab").status_markdown()
    assert "TensorRT is not available" in status and "pip install" in status and "tensorrt-cu12" in status
    assert "no checkpoint is loaded" in status
    assert webui.errors.reported == []


def test_settings_are_registered_in_a_tensorrt_section(webui):
    labels = webui.shared.opts.data_labels
    ours = {k: v for k, v in labels.items() if k.startswith("trt_")}
    assert set(ours) >= {"trt_backend", "trt_on_uncovered", "trt_engine_dir"}
    assert {v.section for v in ours.values()} == {("tensorrt", "TensorRT")}
    assert webui.shared.opts.trt_on_uncovered == "raise"
    assert "trt_quicksettings_hint" not in webui.shared.opts.data  # an OptionHTML is never saved


def test_dropdown_lists_only_checkpoints_with_usable_engines_and_keeps_its_options(webui):
    for name in ("a.safetensors", "b.safetensors", "c.safetensors"):
        webui.add_checkpoint(name, "sd1")
    webui.load("a.safetensors")
    webui.use_stand_in()
    webui.add_engine("a.safetensors", "sd1", SMALL)
    broken = webui.add_engine("c.safetensors", "sd1", SMALL)
    (webui.EXT.store.folder / broken.engine_file).unlink()
    webui.sd_unet.list_unets()
    assert webui.shared_items.sd_unet_items() == ["Automatic", "[TRT] a", "None"]

    first = list(webui.sd_unet.unet_options)
    webui.sd_unet.apply_unet()  # "Automatic"
    active = webui.sd_unet.current_unet
    assert webui.sd_unet.current_unet_option is first[0] and active.session is not None
    webui.shared_items.refresh_unet_list()
    webui.sd_unet.apply_unet()
    assert webui.sd_unet.unet_options[0] is first[0] and webui.sd_unet.current_unet is active  # not reloaded

    webui.load("b.safetensors")  # no engine: Automatic means the PyTorch UNet
    assert webui.sd_unet.current_unet is None


@pytest.mark.catalogue("install")
def test_dropdown_is_empty_without_a_runtime(webui):
    webui.add_checkpoint("a.safetensors", "sd1")
    webui.load("a.safetensors")
    webui.use_stand_in()
    webui.add_engine("a.safetensors", "sd1", SMALL)
    webui.monkeypatch.setattr(webui.EXT, "runtime", lambda: None)
    webui.sd_unet.list_unets()
    assert webui.shared_items.sd_unet_items() == ["Automatic", "None"]


def test_loads_with_the_extension_folder_on_sys_path_only_while_its_script_runs(tmp_path):
    """In a fresh process whose path has the WebUI but not the extension, as in the real WebUI."""
    root = Path(__file__).resolve().parents[2]
    code = f"""
import sys
from modules import errors, paths, script_callbacks, scripts, sd_unet
paths.models_path = {str(tmp_path)!r}
before = list(sys.path)
scripts.load_scripts([{str(root)!r}])
assert sys.path == before and {str(root)!r} not in sys.path
script_callbacks.ui_settings_callback()
tabs = script_callbacks.ui_tabs_callback()
sd_unet.list_unets()
print(len(tabs), [d.script_class.__name__ for d in scripts.scripts_data], errors.reported)
"""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root / "tests" / "webui_stub")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "1 ['TensorRTScript'] []"


def test_engines_with_baked_loras_get_their_own_option_after_the_plain_one(webui):
    webui.add_checkpoint("a.safetensors", "sd1")
    webui.load("a.safetensors")
    webui.use_stand_in()
    baked = webui.add_engine("a.safetensors", "sd1", SMALL, loras=[{"name": "film grain", "weight": 0.8}])
    plain = webui.add_engine("a.safetensors", "sd1", SMALL)
    webui.sd_unet.list_unets()
    assert webui.shared_items.sd_unet_items() == ["Automatic", "[TRT] a", "[TRT] a [LoRA film grain:0.8]", "None"]
    webui.sd_unet.apply_unet()  # "Automatic" takes the plain engines
    assert [e.id for e in webui.sd_unet.current_unet.session.entries] == [plain.id]
    webui.shared.opts.set("sd_unet", "[TRT] a [LoRA film grain:0.8]")
    webui.sd_unet.apply_unet()
    assert [e.id for e in webui.sd_unet.current_unet.session.entries] == [baked.id]

    webui.shared.opts.set("sd_unet", "Automatic")
    webui.module("trt_webui.extension").EXT.delete(plain.id)
    assert webui.shared_items.sd_unet_items() == ["Automatic", "[TRT] a [LoRA film grain:0.8]", "None"]
    webui.sd_unet.apply_unet()
    assert webui.sd_unet.current_unet is None  # "Automatic" never bakes a LoRA into every generation


@pytest.mark.catalogue("backends")
def test_the_extension_refuses_a_refittable_build_on_11_3_before_the_export(webui, monkeypatch):
    trt, calls = fake_tensorrt("11.3.0.5")
    trt10 = webui.module("trt_lib.backends.trt10")
    monkeypatch.setattr(trt10.Backend, "module", lambda self: trt)
    monkeypatch.setattr(trt10, "gpu_capability", lambda: "8.9")  # TensorRT builds for the GPU it runs on
    webui.add_checkpoint("sd15.safetensors", "sd1")
    webui.load("sd15.safetensors")
    profiles = [webui.module("trt_lib.model.families").get_family("sd1").preset("static-512").profile]
    with pytest.raises(webui.module("trt_lib.errors").BuildTargetError, match="11.3.0.5 can build refittable"):
        webui.EXT.submit_build(profiles, refit=True)
    assert webui.EXT.jobs.jobs() == [] and calls == []
