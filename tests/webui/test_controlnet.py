"""ControlNet with engines in the stand-in WebUI: ControlNet-ready builds through the API and the tab."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

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
    columns = webui.module("trt_webui.tab").ENGINE_COLUMNS
    assert rows[0][columns.index("ControlNet")] == "ready"
    # the same option as plain engines: jobs with and without ControlNet find it under one stable label
    assert client.get("/tensorrt/v1/unets").json() == {"sd_unet": ["Automatic", "[TRT] sd15", "None"]}


def test_controlnet_ready_refiner_build_is_refused_before_anything_is_queued(webui):
    client = api_client(webui, "refiner.safetensors", "sdxl-refiner")
    r = client.post("/tensorrt/v1/builds", json={"profiles": [SMALL], "controlnet": True})
    assert r.status_code == 422 and "SDXL refiner engines cannot take ControlNet" in r.json()["detail"]
    assert webui.EXT.jobs.jobs() == []
