"""The WebUI's txt2img API with engines, and the extension's own routes, with good and bad bodies."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from trt_lib.model.tiny_unets import make_unet

SMALL = {"batch": [1, 1, 2], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 75]}


@pytest.fixture
def client(webui):
    webui.add_checkpoint("sd15.safetensors", "sd1")
    webui.load("sd15.safetensors")
    webui.use_stand_in()
    webui.engine = webui.add_engine("sd15.safetensors", "sd1", SMALL)
    webui.sd_unet.list_unets()
    return TestClient(webui.start("--api"))


@pytest.mark.catalogue("sampling")
def test_txt2img_with_the_engine_and_an_uncovered_job(client, webui):
    ok = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2,
                                                 "override_settings": {"sd_unet": "[TRT] sd15"}})
    assert ok.status_code == 200 and webui.sd_unet.current_unet_option.label == "[TRT] sd15"
    bad = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 192,
                                                  "override_settings": {"sd_unet": "[TRT] sd15"}})
    body = bad.json()
    assert bad.status_code == 422 and body["error"] == "NoProfileError"
    assert "width 192 px is 64 px over the engine's maximum of 128" in body["errors"]
    assert body["detail"] == body["errors"]
    assert webui.shared.opts.sd_unet == "Automatic"  # the override was put back


@pytest.mark.catalogue("api")
def test_an_expected_rejection_prints_one_line_not_a_traceback(client, webui, capsys):
    """The stand-in's api_middleware and errors.report mirror the WebUI's: a traceback for all but an
    HTTPException. A refused job (422) is one line on the console; the answer keeps its name and message."""
    capsys.readouterr()
    bad = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 192})
    body = bad.json()
    assert bad.status_code == 422 and body["error"] == "NoProfileError" and body["errors"] == body["detail"]
    assert body["errors"].startswith("No TensorRT engine for sd15") and "width 192 px" in body["errors"]
    console = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert console == [f"[TensorRT] generation stopped (HTTP 422): {body['errors']}"]


def test_fallback_through_the_api_reports_it_in_the_info(client, webui):
    webui.shared.opts.set("trt_on_uncovered", "fallback")
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 192})
    assert r.status_code == 200
    assert "PyTorch UNet used" in json.loads(r.json()["info"])["extra_generation_params"]["TensorRT"]


def test_listing_routes(client, webui):
    assert client.get("/tensorrt/v1/unets").json() == {"sd_unet": ["Automatic", "[TRT] sd15", "None"]}
    engines = client.get("/tensorrt/v1/engines").json()["engines"]
    assert [(e["id"], e["usable"]) for e in engines] == [(webui.engine.id, True)]
    presets = client.get("/tensorrt/v1/presets").json()
    assert presets["family"] == "sd1" and "static-512" in {p["name"] for p in presets["presets"]}
    fit = client.post("/tensorrt/v1/fit", json={"width": 128, "height": 64, "batch_size": 2}).json()
    assert fit == {"covered": True, "runs_here": False, "engines": [webui.engine.id],  # no CUDA GPU here
                   "message": f"Covered by {webui.engine.id}, but it cannot run here: {webui.engine.id}: no CUDA GPU "
                              "here to run it (it runs on the GPU it was built for)."}
    assert client.post("/tensorrt/v1/fit", json={"width": 256}).json()["covered"] is False


@pytest.mark.catalogue("api")
@pytest.mark.parametrize("body", [
    {},
    {"preset": "static-512", "profiles": [{"batch": 1, "height": 512, "width": 512}]},
    {"profiles": [{"batch": 1}]},
    {"profiles": [{"batch": "four", "height": 512, "width": 512}]},
    {"profiles": [{"batch": 1, "height": 500, "width": 512}]},
    {"preset": "no-such-preset"},
    {"preset": "static-512", "colour": "red"},
])
def test_bad_build_bodies_are_refused_with_a_4xx(client, body):
    r = client.post("/tensorrt/v1/builds", json=body)
    assert 400 <= r.status_code < 500, r.json()


@pytest.mark.catalogue("api")
def test_bad_fit_body_is_refused(client):
    assert client.post("/tensorrt/v1/fit", json={"width": "wide"}).status_code == 422


@pytest.mark.catalogue("api")
def test_builds_queue_one_at_a_time_and_hold_the_queue_lock_only_to_export(client, webui, monkeypatch):
    extension = webui.module("trt_webui.extension")
    release, started, lock_held = threading.Event(), [], []

    class FakeBackend:
        def version(self) -> str:
            return "stand-in"

        def needs_gpu_to_build(self, refit: bool) -> bool:
            return False  # an ahead-of-time build on the CPU, as TensorRT for RTX does

        def check_build(self, compute_capability: str | None, refit: bool) -> str:
            return "stand-in"  # a backend that can do every build

    def fake_export(unet, request, store, **kwargs):
        lock_held.append(("export", webui.call_queue.queue_lock.locked()))
        return store.folder / "unet.onnx"

    def fake_build(onnx_path, request, store, **kwargs):
        lock_held.append(("build", webui.call_queue.queue_lock.locked()))
        started.append(request.profiles[0].label())
        release.wait(10)
        return webui.engine

    monkeypatch.setattr(extension, "get_backend", lambda name: FakeBackend())
    monkeypatch.setattr(extension, "export_stage", fake_export)
    monkeypatch.setattr(extension, "build_stage", fake_build)
    first = client.post("/tensorrt/v1/builds", json={"preset": "static-512"}).json()["job_id"]
    second = client.post("/tensorrt/v1/builds", json={"profiles": [SMALL]}).json()["job_id"]
    assert client.get(f"/tensorrt/v1/builds/{second}").json()["state"] == "queued"
    for _ in range(200):  # wait until the first build runs, then a generation can still take the lock
        if started:
            break
        time.sleep(0.02)
    assert webui.call_queue.queue_lock.acquire(timeout=5)
    webui.call_queue.queue_lock.release()
    release.set()
    for job in (first, second):
        assert webui.EXT.jobs.wait(job, timeout=10).state == "done"
    assert len(started) == 2
    assert lock_held == [("export", True), ("build", False)] * 2
    assert client.get(f"/tensorrt/v1/builds/{first}").json()["engine_id"] == webui.engine.id
    for r in (client.get("/tensorrt/v1/builds/nope"), client.post("/tensorrt/v1/builds/nope/cancel")):
        assert r.status_code == 404 and r.json()["errors"] == r.json()["detail"] == "no build job 'nope'"


@pytest.mark.catalogue("install")
def test_build_without_a_backend_says_how_to_install_it(client):
    r = client.post("/tensorrt/v1/builds", json={"preset": "static-512"})
    assert r.status_code == 503 and "pip install" in r.json()["detail"] and "tensorrt-cu12" in r.json()["detail"]


@pytest.mark.catalogue("api")
def test_delete_an_engine_in_use(client, webui):
    webui.sd_unet.apply_unet()
    assert webui.sd_unet.current_unet is not None
    assert client.delete("/tensorrt/v1/engines/no-such-engine").status_code == 404
    assert client.delete("/tensorrt/v1/engines/..%2Fmanifest").status_code in (404, 422)
    r = client.delete(f"/tensorrt/v1/engines/{webui.engine.id}")
    assert r.status_code == 200 and r.json() == {"deleted": webui.engine.id}
    assert webui.sd_unet.current_unet is None and webui.shared_items.sd_unet_items() == ["Automatic", "None"]
    assert not (webui.EXT.store.folder / webui.engine.engine_file).exists()
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2}).status_code == 200


@pytest.mark.catalogue("api")
def test_a_checkpoint_of_no_known_family_is_refused_clearly(client, webui):
    spec = webui.sd_models.CheckpointSpec(make_unet=lambda: make_unet("sd1"), context_dim=768, parameterization="v")
    webui.sd_models.add_checkpoint("odd.safetensors", spec)
    webui.load("odd.safetensors")
    r = client.get("/tensorrt/v1/presets")
    assert r.status_code == 422 and "odd.safetensors" in r.json()["detail"]
    assert "no model family matches" in r.json()["detail"]
    assert client.post("/tensorrt/v1/builds", json={"preset": "static-512"}).status_code == 422
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2}).status_code == 200


@pytest.mark.catalogue("api")
def test_engine_files_the_manifest_lost_are_adopted_or_deleted(client, webui):
    store = webui.EXT.store
    store.manifest_path.rename(store.folder / "manifest.old")  # the Troubleshooting fix for a broken manifest
    (store.folder / "by-hand.engine").write_bytes(b"engine")
    problems = {p["id"]: p["reason"] for p in client.get("/tensorrt/v1/engines").json()["problems"]}
    assert "adopt it" in problems[webui.engine.engine_file] and "delete it" in problems["by-hand.engine"]
    r = client.post(f"/tensorrt/v1/engines/files/{webui.engine.engine_file}/adopt")
    assert r.status_code == 200 and r.json() == {"adopted": webui.engine.id}
    assert [e["id"] for e in client.get("/tensorrt/v1/engines").json()["engines"]] == [webui.engine.id]
    assert client.get("/tensorrt/v1/unets").json()["sd_unet"] == ["Automatic", "[TRT] sd15", "None"]
    r = client.post("/tensorrt/v1/engines/files/by-hand.engine/adopt")
    assert r.status_code == 409 and "no record by-hand.engine.json" in r.json()["detail"]
    for name in (webui.engine.engine_file, "manifest.json", "nothing.engine"):
        assert client.delete(f"/tensorrt/v1/engines/files/{name}").status_code == 404
    assert client.delete("/tensorrt/v1/engines/files/by-hand.engine").json() == {"deleted": "by-hand.engine"}
    assert not (store.folder / "by-hand.engine").exists() and (store.folder / webui.engine.engine_file).exists()
    assert client.post("/tensorrt/v1/engines/nothing/rebuild").status_code == 404
