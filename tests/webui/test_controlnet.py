"""ControlNet with engines in the stand-in WebUI: ControlNet-ready builds through the API and the tab, and
ControlNet jobs through the ControlNet extension's stand-in: on the engine, refused, or on PyTorch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ldm_layout import LdmView

from conftest import STAND_IN
from trt_lib.engines.onnx_runtime import reference_runner
from trt_lib.errors import NoProfileError
from trt_lib.export.onnx_export import export_onnx
from trt_lib.model.families import get_family
from trt_lib.model.profiles import Profile
from trt_lib.model.tiny_unets import make_unet
from trt_lib.store.engine_store import EngineEntry

pytest.importorskip("tensorrt_rtx")

SMALL = {"batch": [1, 1, 1], "height": [64, 64, 64], "width": [64, 64, 64], "tokens": [75, 75, 75]}


def api_client(webui, checkpoint: str, family: str) -> TestClient:
    webui.shared.opts.set("trt_backend", "tensorrt_rtx")
    webui.shared.opts.set("trt_compute_capability", "8.9")
    webui.add_checkpoint(checkpoint, family)
    webui.load(checkpoint)
    app = FastAPI()
    webui.module("modules.api.api").Api(app, webui.call_queue.queue_lock)
    webui.script_callbacks.app_started_callback(None, app)
    return TestClient(app)


def test_controlnet_ready_build_through_the_api_is_recorded_and_listed(webui):
    client = api_client(webui, "sd15.safetensors", "sd1")
    r = client.post("/tensorrt/v1/builds", json={"profiles": [SMALL], "controlnet": True})
    assert r.status_code == 200, r.text
    job = webui.EXT.jobs.wait(r.json()["job_id"], timeout=120)
    assert job.state == "done", job.message
    listed = client.get("/tensorrt/v1/engines").json()["engines"]
    assert [e["controlnet"] for e in listed] == [True] and len(listed[0]["controlnet_residuals"]) == 5
    rows = webui.module("trt_webui.tab").engine_rows()
    assert rows["ControlNet"].tolist() == ["ready"]
    # the same option as plain engines: jobs with and without ControlNet find it under one stable label
    assert client.get("/tensorrt/v1/unets").json() == {"sd_unet": ["Automatic", "[TRT] sd15", "None"]}


def test_controlnet_ready_refiner_build_is_refused_before_anything_is_queued(webui):
    client = api_client(webui, "refiner.safetensors", "sdxl-refiner")
    r = client.post("/tensorrt/v1/builds", json={"profiles": [SMALL], "controlnet": True})
    assert r.status_code == 422 and "SDXL refiner engines cannot take ControlNet" in r.json()["detail"]
    assert webui.EXT.jobs.jobs() == []


# -- ControlNet jobs through the ControlNet extension's stand-in (tests/webui_stub/extensions) ------------------

CN_EXT = Path(__file__).resolve().parents[1] / "webui_stub" / "extensions" / "sd-webui-controlnet"
ROOT = Path(__file__).resolve().parents[2]


def _drop_controlnet_modules() -> None:
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]


@pytest.fixture
def cn(webui):
    """The stand-in WebUI with the ControlNet stand-in installed and active, loaded beside this extension."""
    extensions = webui.module("modules.extensions")
    extensions.extensions[:] = [extensions.Extension("sd-webui-controlnet", str(CN_EXT))]
    _drop_controlnet_modules()
    webui.scripts.load_scripts([str(ROOT), str(CN_EXT)])
    webui.scripts.scripts_txt2img.initialize_scripts(is_img2img=False)
    webui.script_callbacks.ui_settings_callback()
    webui.use_stand_in()
    yield webui
    _drop_controlnet_modules()


def cldm():
    spec = importlib.util.spec_from_file_location("cn_cldm", CN_EXT / "scripts" / "cldm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_ldm_checkpoint(webui, name: str, family: str) -> None:
    """A checkpoint whose UNet has ldm's layout (as the WebUI loads them), the tiny UNet's weights."""
    fam = get_family(family)
    webui.sd_models.add_checkpoint(name, webui.sd_models.CheckpointSpec(
        make_unet=lambda: LdmView(make_unet(fam)), context_dim=fam.traits.context_dim, adm_dim=fam.traits.adm_dim,
        in_channels=fam.traits.in_channels, parameterization=fam.traits.prediction))
    webui.load(name)


def add_engine(webui, family: str, profile: dict, controlnet: bool) -> EngineEntry:
    """A stand-in engine of the loaded UNet: its real export (ControlNet-ready or plain), run on ONNX Runtime."""
    store, fam = webui.EXT.store, get_family(family)
    onnx_dir = f"onnx/{family}-{'cn' if controlnet else 'plain'}"
    report = export_onnx(webui.unet(), fam, store.folder / onnx_dir / "unet.onnx", dtype=torch.float32,
                         controlnet=controlnet)
    info = webui.sd_models.get_closet_checkpoint_match(webui.shared.sd_model.sd_checkpoint_info.title)
    engine_id = store.new_id(info.model_name)
    (store.folder / f"{engine_id}.engine").write_bytes(b"placeholder engine: runs through its ONNX")
    entry = store.add(EngineEntry(
        id=engine_id, checkpoint=info.model_name, checkpoint_hash=info.sha256, family=fam.name,
        profiles=[Profile.from_dict(profile).to_dict()], backend=STAND_IN.backend,
        backend_version=STAND_IN.backend_version, compute_capabilities=[], engine_file=f"{engine_id}.engine",
        engine_bytes=0, onnx_file=f"{onnx_dir}/unet.onnx", dtype="float32", controlnet=controlnet,
        controlnet_residuals=[[p.channels, p.downscale] for p in report.controlnet]))
    webui.sd_unet.list_unets()
    return entry


def count_engine_calls(webui, monkeypatch) -> list[int]:
    calls: list[int] = []

    def factory(store, entry):
        runner = reference_runner(store, entry)
        infer = runner.infer
        runner.infer = lambda feeds, index: (calls.append(len(feeds)), infer(feeds, index))[1]
        return runner

    monkeypatch.setattr(webui.EXT, "runner_factory", factory)
    return calls


def units(family: str, width: int, height: int, *specs: dict) -> list:
    """ControlParams of ControlNet units with tiny ControlNets of the family (seeded), hints at the job's size."""
    hook = sys.modules["scripts.hook"]
    base = get_family(family.replace("-inpaint", ""))
    made = []
    for i, spec in enumerate(specs):
        torch.manual_seed(10 + i)
        model = cldm().PlugableControlModel(cldm().ControlNet(LdmView(make_unet(base, seed=10 + i))))
        hint = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(i))
        hr = spec.pop("hr", None)
        made.append(hook.ControlParams(model, {"name": spec.pop("preprocessor", "canny")}, hint,
                                       hr_hint_cond=None if hr is None else torch.rand(1, 3, *hr), **spec))
    return made


def txt2img(webui, sd_unet: str, params_for, **job):
    p = webui.processing.StableDiffusionProcessingTxt2Img(
        sd_model=webui.shared.sd_model, override_settings={"sd_unet": sd_unet}, **job)
    p.scripts = webui.scripts.scripts_txt2img
    p.controlnet_params = params_for()
    return webui.processing.process_images(p)


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


LONG = "a cat " * 60  # over 75 tokens
CASES = {
    "one unit": ("sd1", {"width": 64, "height": 64}, [{}]),
    "two units, weight 0.5, soft injection, guidance ends at 50%, batch 2, long prompt, non-square": (
        "sd1", {"width": 128, "height": 64, "batch_size": 2, "prompt": LONG},
        [{"weight": 0.5}, {"soft_injection": True, "stop_guidance_percent": 0.5}]),
    "inpainting UNet": ("sd1-inpaint", {"width": 64, "height": 64}, [{"weight": 0.7}]),
    "SDXL": ("sdxl", {"width": 64, "height": 64}, [{}]),
    "hires pass with its own hint": ("sd1", {"width": 64, "height": 64, "enable_hr": True, "hr_scale": 2.0},
                                     [{"hr": (128, 128)}]),
}
PROFILE = {"batch": [1, 1, 2], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 450]}


@pytest.mark.parametrize("case", list(CASES))
def test_controlnet_job_runs_on_the_engine_with_pytorchs_image(case, cn, monkeypatch):
    family, job, specs = CASES[case]
    job = {"prompt": "a cat", "negative_prompt": "blurry", "steps": 3, "seed": 5, **job}
    load_ldm_checkpoint(cn, "model.safetensors", family)
    add_engine(cn, family, PROFILE, controlnet=True)
    calls = count_engine_calls(cn, monkeypatch)

    def params():
        return units(family, job["width"], job["height"], *[dict(s) for s in specs])

    reference = txt2img(cn, "None", params, **job).images
    without = txt2img(cn, "None", lambda: [], **job).images
    assert not calls
    images = txt2img(cn, "[TRT] model", params, **job).images
    points = len(cn.EXT.store.entries()[0].controlnet_residuals)
    inputs = len(get_family(family).input_names) + points
    assert calls and set(calls) == {inputs}  # every UNet call went to the engine, with its residual inputs
    assert cn.module("trt_webui.loaded_model").forward_hook_owner(cn.unet()) is None  # ControlNet restored it
    for got, want, plain in zip(images, reference, without):
        assert rel(want, plain) > 1e-3  # ControlNet changes the image
        assert rel(got, want) < 1e-4, case


def test_controlnet_job_with_only_a_plain_engine_names_the_build_option(cn, monkeypatch):
    load_ldm_checkpoint(cn, "model.safetensors", "sd1")
    add_engine(cn, "sd1", PROFILE, controlnet=False)
    calls = count_engine_calls(cn, monkeypatch)
    job = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64}
    ran = []
    params = units("sd1", 64, 64, {})
    params[0].control_model.register_forward_hook(lambda *a: ran.append(1))
    processing = cn.processing.StableDiffusionProcessing
    marked = ["a cat", "conds ControlNet marked with an extra row"]
    processing.cached_c = processing.cached_uc = marked
    with pytest.raises(NoProfileError, match='"ControlNet-ready" ticked'):
        txt2img(cn, "[TRT] model", lambda: params, **job)
    assert not calls and not ran  # stopped before the first step
    # cleared as ControlNet's forward would have (seen in the real WebUI: else the same prompt without
    # ControlNet met "a context of 78 rows")
    assert processing.cached_c == processing.cached_uc == [None, None]
    # nothing of it is left for the next job (ControlNet unhooks the failed job's forward), which runs on the engine
    txt2img(cn, "[TRT] model", lambda: [], **job)
    assert calls


@pytest.mark.parametrize("setting", ["raise", "fallback"])
def test_units_that_cannot_reach_an_engine_are_named_before_the_first_step(setting, cn, monkeypatch):
    cn.shared.opts.set("trt_on_uncovered", setting)
    load_ldm_checkpoint(cn, "model.safetensors", "sd1")
    add_engine(cn, "sd1", PROFILE, controlnet=True)
    calls = count_engine_calls(cn, monkeypatch)
    hook = sys.modules["scripts.hook"]
    enums = sys.modules["scripts.enums"]
    job = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 3}

    def params():
        made = units("sd1", 64, 64, {}, {"preprocessor": "ip-adapter_clip_sd15"})
        made[1].control_model_type = enums.ControlModelType.IPAdapter
        return made

    if setting == "raise":
        with pytest.raises(cn.module("trt_webui.controlnet").ControlNetUnitError,
                           match=r"ControlNet unit 2 \(ip-adapter_clip_sd15, IPAdapter\) changes attention"):
            txt2img(cn, "[TRT] model", params, **job)
        assert not calls
    else:
        result = txt2img(cn, "[TRT] model", params, **job)
        assert not calls and "PyTorch UNet used" in result.extra_generation_params["TensorRT"]
        assert rel(result.images[0], txt2img(cn, "None", params, **job).images[0]) < 1e-6
    assert hook.ControlModelType is enums.ControlModelType


def test_another_controlnet_version_stays_on_pytorch_with_a_clear_message(cn, monkeypatch):
    load_ldm_checkpoint(cn, "model.safetensors", "sd1")
    add_engine(cn, "sd1", PROFILE, controlnet=True)
    monkeypatch.setattr(sys.modules["scripts.controlnet_version"], "version_flag", "v1.1.400")
    calls = count_engine_calls(cn, monkeypatch)
    job = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64}
    with pytest.raises(cn.module("trt_webui.job_check").UnetHookedError, match=r"ControlNet v1\.1\.400 is not"):
        txt2img(cn, "[TRT] model", lambda: units("sd1", 64, 64, {}), **job)
    assert not calls
    assert cn.sd_unet.current_unet.pending is None  # raised by the forward the job called, not parked
