"""Check engine in the WebUI stand-in: engines run by the reference runtime (their real ONNX exports) against
the loaded PyTorch UNet, through the tab and the API; the report lands in the manifest and the engine list."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient

SMALL = {"batch": [1, 1, 2], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 150]}
REFERENCE = "ONNX Runtime (reference)"


def no_progress(fraction: float, desc: str = "") -> None:
    pass


@pytest.fixture
def sd1(webui):
    webui.add_checkpoint("sd15.safetensors", "sd1")
    webui.load("sd15.safetensors")
    webui.shared.opts.set("trt_run_with", REFERENCE)
    webui.good = webui.add_engine("sd15.safetensors", "sd1", SMALL)
    webui.sd_unet.list_unets()
    return webui


def test_check_passes_a_good_engine_and_finds_a_corrupted_one(sd1, corrupted_onnx):
    bad = sd1.add_engine("sd15.safetensors", "sd1", SMALL, onnx=corrupted_onnx("sd1", "conv_out.weight", 0.8))
    check, tab = sd1.module("trt_webui.engine_check"), sd1.module("trt_webui.tab")
    _, good = check.check(sd1.good.id)
    picked = next(label for label, (_, key) in tab.engine_choices().items() if key == bad.id)
    text, rows = tab.check_engine(picked, progress=no_progress)
    assert good.passed and [r.shape.split(":")[0] for r in good.shapes] == [
        "profile 1 min", "profile 1 opt", "profile 1 max", "profile 1 opt, longest prompt"]
    assert good.runtime == "ONNX Runtime (reference, CPU)" and good.tolerance == 1e-3  # fp32 both sides
    assert text.startswith("⚠") and "CHECK FAILED" in text and "**What to do:**" in text and "build it again" in text
    manifest = {e["id"]: e["check"] for e in json.loads(sd1.EXT.store.manifest_path.read_text())["engines"]}
    assert manifest[sd1.good.id]["passed"] is True and manifest[bad.id]["passed"] is False
    assert manifest[bad.id]["shapes"][0]["relative_error"] > 0.1
    checks = dict(zip(rows["id"], rows["check"]))
    assert checks[sd1.good.id].startswith("check passed") and checks[bad.id].startswith("CHECK FAILED")


def test_pytorch_runs_under_the_queue_lock_and_the_active_engine_is_left_as_it_was(sd1, monkeypatch):
    sd1.txt2img(prompt="a cat", steps=1)  # Automatic: the engine is active, the PyTorch UNet on the CPU
    active, unet = sd1.sd_unet.current_unet, sd1.unet()
    assert active is not None and active.option.label == "[ORT] sd15"
    provider, ort = sd1.module("trt_webui.provider"), sd1.module("trt_lib.engines.onnx_runtime")
    seen = {"pytorch": [], "engine": [], "active engine": 0}
    unet.conv_in.register_forward_hook(lambda *_: seen["pytorch"].append(sd1.call_queue.queue_lock.locked()))
    infer = ort.OnnxRuntimeRunner.infer
    monkeypatch.setattr(ort.OnnxRuntimeRunner, "infer", lambda self, feeds, index: (
        seen["engine"].append(sd1.call_queue.queue_lock.locked()), infer(self, feeds, index))[1])
    forward = provider.TrtUnet.forward
    monkeypatch.setattr(provider.TrtUnet, "forward", lambda self, *a, **k: (
        seen.__setitem__("active engine", seen["active engine"] + 1), forward(self, *a, **k))[1])
    _, report = sd1.module("trt_webui.engine_check").check(sd1.good.id)
    assert report.passed
    assert seen["pytorch"] == [True] * 4 and seen["engine"] == [False] * 4  # on the CPU the engine needs no lock
    assert seen["active engine"] == 0, "the check calls the PyTorch UNet's own forward, not the active engine"
    assert sd1.sd_unet.current_unet is active and active.session is not None
    assert next(unet.parameters()).device == torch.device("cpu") and not sd1.call_queue.queue_lock.locked()
    sd1.txt2img(prompt="a cat", steps=1)
    assert seen["active engine"] == 1


@pytest.fixture
def client(sd1):
    return TestClient(sd1.start("--api"))


@pytest.mark.catalogue("api")
def test_check_route_reports_and_lists_the_figures(client, sd1):
    r = client.post(f"/tensorrt/v1/engines/{sd1.good.id}/check")
    assert r.status_code == 200 and r.json()["passed"] and r.json()["id"] == sd1.good.id
    again = client.post(f"/tensorrt/v1/engines/{sd1.good.id}/check", json={"seed": 5}).json()
    assert again["seed"] == 5 and again["summary"].startswith("check passed")
    (listed,) = client.get("/tensorrt/v1/engines").json()["engines"]
    assert listed["check"] == {k: v for k, v in again.items() if k != "id"}
    assert listed["runs_here"], "ONNX Runtime runs it without a GPU"


@pytest.mark.catalogue("api")
@pytest.mark.parametrize("body", [{"seed": "x"}, {"colour": 1}, [1]])
def test_check_route_refuses_a_bad_body(client, sd1, body):
    r = client.post(f"/tensorrt/v1/engines/{sd1.good.id}/check", json=body)
    assert r.status_code == 422 and not sd1.EXT.store.get(sd1.good.id).check


@pytest.mark.catalogue("api")
def test_check_route_unknown_engine(client, sd1):
    r = client.post("/tensorrt/v1/engines/nope-12345678/check")
    assert r.status_code == 404 and f"no engine 'nope-12345678'; engines: {sd1.good.id}" in r.json()["detail"]


@pytest.mark.catalogue("api")
def test_check_route_refuses_another_checkpoint(client, sd1):
    sd1.add_checkpoint("other.safetensors", "sd1", seed=1)
    sd1.load("other.safetensors")
    r = client.post(f"/tensorrt/v1/engines/{sd1.good.id}/check")
    assert r.status_code == 409
    assert "was built from sd15" in r.json()["detail"] and "other.safetensors" in r.json()["detail"]
    assert "load that checkpoint" in r.json()["detail"] and not sd1.EXT.store.get(sd1.good.id).check


@pytest.mark.catalogue("api")
def test_check_route_refuses_a_replaced_checkpoint_file(client, sd1, monkeypatch):
    monkeypatch.setattr(sd1.shared.sd_model.sd_checkpoint_info, "sha256", "f" * 64)
    r = client.post(f"/tensorrt/v1/engines/{sd1.good.id}/check")
    assert r.status_code == 409 and "is another file under that name (hash ffffffffff)" in r.json()["detail"]


@pytest.mark.catalogue("api")
def test_check_of_an_engine_tensorrt_cannot_run_here_says_to_use_the_reference_runtime(client, sd1):
    sd1.shared.opts.set("trt_run_with", "TensorRT")
    r = client.post(f"/tensorrt/v1/engines/{sd1.good.id}/check")
    assert r.status_code == 503
    assert "cannot run here" in r.json()["detail"] and f"choose '{REFERENCE}'" in r.json()["detail"]
