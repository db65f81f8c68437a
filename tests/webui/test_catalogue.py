"""Reliability catalogue cases that cross the extension's edges: names through the API, and a TensorRT that
is installed but cannot load."""

from __future__ import annotations

import importlib

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

SMALL = {"batch": [1, 1, 2], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 75]}


@pytest.fixture
def client(webui):
    webui.engine = webui.with_engine("sd15.safetensors", "sd1", SMALL).EXT.store.entries()[0]
    app = FastAPI()
    webui.module("modules.api.api").Api(app, webui.call_queue.queue_lock)
    webui.script_callbacks.app_started_callback(None, app)
    return TestClient(app)


def folder_snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.catalogue("names")
@pytest.mark.parametrize("engine_id", ["..%2Fmanifest.json", "..%2F..%2Foutside", "%2Fetc%2Fpasswd", "a%00b",
                                       "x" * 300, ".hidden", "manifest.json"])
def test_deleting_by_a_bad_name_touches_nothing(client, webui, engine_id):
    outside = webui.data / "outside.engine"
    outside.write_bytes(b"not ours")
    before = folder_snapshot(webui.EXT.store.folder)
    r = client.delete(f"/tensorrt/v1/engines/{engine_id}")
    assert 400 <= r.status_code < 500, r.text
    assert folder_snapshot(webui.EXT.store.folder) == before and outside.read_bytes() == b"not ours"


@pytest.mark.catalogue("install")
def test_tensorrt_present_without_a_cuda_driver_keeps_the_webui_working(client, webui, monkeypatch):
    real_import = importlib.import_module

    def no_driver(name, *args, **kwargs):
        if name in ("tensorrt", "tensorrt_rtx"):
            raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")
        return real_import(name, *args, **kwargs)

    monkeypatch.undo()  # the real runtime check, not the stand-in's
    monkeypatch.setattr(importlib, "import_module", no_driver)
    tab = webui.module("trt_webui.tab")
    status = tab.status_markdown()
    assert "is not available" in status and "libcuda.so.1" in status and "pip install" in status
    r = client.post("/tensorrt/v1/builds", json={"preset": "static-512"})
    assert r.status_code == 503 and "libcuda.so.1" in r.json()["detail"]
    webui.sd_unet.list_unets()
    assert webui.shared_items.sd_unet_items() == ["Automatic", "None"]  # nothing offered that cannot run
    assert webui.txt2img(prompt="a cat", steps=2).images  # generation goes on with the PyTorch UNet
