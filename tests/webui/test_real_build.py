"""A real engine build through the WebUI's API: the loaded checkpoint's UNet exported as sampling runs it,
built by TensorRT for RTX on this machine for compute capability 8.9, recorded, offered in the dropdown, and
used by a txt2img (a clear error without a GPU; on the ONNX Runtime stand-in, the PyTorch UNet's image).
"""

from __future__ import annotations

import json
import threading

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

pytest.importorskip("tensorrt_rtx")

CHECKPOINT = "sd15.safetensors"
LABEL = "[TRT] sd15"
SIZE = 128
"""Image size of the build and the jobs: the tiny UNet's attention over every latent pixel makes a 512 px
job cost ~3 GB of RAM, 128 px under 1 GB (the preset path of the build API is tested in test_api)."""
PROFILE = {"batch": [1, 1, 1], "height": [SIZE] * 3, "width": [SIZE] * 3, "tokens": [75, 75, 75]}
JOB = {"prompt": "a cat", "negative_prompt": "blurry", "steps": 2, "width": SIZE, "height": SIZE, "seed": 7}


@pytest.fixture
def client(webui):
    """The stand-in WebUI with a tiny SD 1.x checkpoint loaded, TensorRT for RTX building for 8.9, and its
    real runtime check (no GPU here: engines of this backend and version count as usable, none can load)."""
    webui.shared.opts.set("trt_backend", "tensorrt_rtx")
    webui.shared.opts.set("trt_compute_capability", "8.9")
    webui.add_checkpoint(CHECKPOINT, "sd1")
    webui.load(CHECKPOINT)
    app = FastAPI()
    webui.module("modules.api.api").Api(app, webui.call_queue.queue_lock)
    webui.script_callbacks.app_started_callback(None, app)
    return TestClient(app)


def store_files(webui) -> list[str]:
    folder = webui.EXT.store.folder
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def test_build_list_and_run_a_real_engine(client, webui, monkeypatch):
    hijack = webui.module("modules.sd_hijack").model_hijack
    extension = webui.module("trt_webui.extension")
    unet = webui.unet()
    weights = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    assert client.get("/tensorrt/v1/unets").json() == {"sd_unet": ["Automatic", "None"]}

    seen_at_export: list[str | None] = []
    export_stage = extension.export_stage

    def spy_export(*args, **kwargs):
        seen_at_export.append(hijack.optimization_method)
        return export_stage(*args, **kwargs)

    monkeypatch.setattr(extension, "export_stage", spy_export)
    calls_before = len(hijack.optimization_calls)
    r = client.post("/tensorrt/v1/builds", json={"profiles": [PROFILE]})
    assert r.status_code == 200, r.text
    job = webui.EXT.jobs.wait(r.json()["job_id"], timeout=120)
    assert job.state == "done", job.message
    status = client.get(f"/tensorrt/v1/builds/{job.id}").json()
    assert status["state"] == "done" and status["progress"] == 1.0

    # plain attention for the export only, the user's choice back afterwards
    assert seen_at_export == [""]
    assert hijack.optimization_calls[calls_before:] == ["None", None]
    assert hijack.optimization_method == webui.shared.opts.cross_attention_optimization
    # the loaded UNet is untouched
    after = unet.state_dict()
    assert webui.unet() is unet and after.keys() == weights.keys()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in weights.items())

    entry = webui.EXT.store.get(status["engine_id"])
    assert (entry.checkpoint, entry.family, entry.backend) == ("sd15", "sd1", "tensorrt_rtx")
    assert entry.compute_capabilities == ["8.9"] and entry.backend_version == webui.EXT.runtime().backend_version
    assert entry.dtype == str(webui.devices.dtype_unet).removeprefix("torch.")
    assert entry.profiles == [PROFILE]
    engine_path = webui.EXT.store.engine_path(entry)
    assert engine_path.stat().st_size == entry.engine_bytes > 0
    info = webui.sd_models.get_closet_checkpoint_match(CHECKPOINT)
    assert entry.checkpoint_hash == info.sha256 and len(info.sha256) == 64  # the file's full sha256
    record = engine_path.with_name(engine_path.name + ".json")  # what adopting the file needs
    assert webui.module("trt_lib.store.engine_store").EngineEntry.from_dict(json.loads(record.read_text())) == entry
    listed = client.get("/tensorrt/v1/engines").json()["engines"][0]
    assert listed["usable"] is True and listed["runs_here"] is False and "no CUDA GPU here" in listed["problem"]
    # in the dropdown without a restart
    assert client.get("/tensorrt/v1/unets").json() == {"sd_unet": ["Automatic", LABEL, "None"]}
    assert LABEL in [o.label for o in webui.sd_unet.unet_options]

    # the real runtime: no CUDA GPU here, so the engine cannot load; the job stops with that reason
    r = client.post("/sdapi/v1/txt2img", json={**JOB, "override_settings": {"sd_unet": LABEL}})
    body = r.json()
    assert r.status_code == 500 and body["error"] == "EngineRunError", body
    assert "run on an NVIDIA GPU with CUDA" in body["detail"] and engine_path.name in body["detail"]
    assert body["detail"] == body["errors"]
    assert webui.shared.opts.sd_unet == "Automatic"  # the override was put back
    r = client.post("/sdapi/v1/txt2img", json={**JOB, "override_settings": {"sd_unet": "None"}})
    assert r.status_code == 200  # the WebUI goes on with the PyTorch UNet

    # the same engine's own ONNX on the ONNX Runtime stand-in: the PyTorch UNet's image
    monkeypatch.setattr(webui.EXT, "runner_factory", webui.module("trt_lib.engines.onnx_runtime").reference_runner)
    reference = webui.txt2img(**JOB, override_settings={"sd_unet": "None"}).images
    assert webui.sd_unet.current_unet is None
    r = client.post("/sdapi/v1/txt2img", json={**JOB, "override_settings": {"sd_unet": LABEL}})
    assert r.status_code == 200, r.text
    assert webui.sd_unet.current_unet_option.label == LABEL and webui.sd_unet.current_unet.session is not None
    images = webui.txt2img(**JOB, override_settings={"sd_unet": LABEL}).images
    assert webui.sd_unet.current_unet_option.label == LABEL
    assert len(images) == len(reference) == 1 and images[0].shape == reference[0].shape == (1, 4, SIZE // 8, SIZE // 8)
    error = float((images[0] - reference[0]).norm() / reference[0].norm())
    assert error <= 1e-4, error  # fp32 on both sides, over two sampling steps
    assert not torch.equal(reference[0], torch.zeros_like(reference[0]))


@pytest.mark.catalogue("interruptions")
def test_a_build_cancelled_through_the_api_leaves_no_engine(client, webui, monkeypatch):
    """Cancelled while TensorRT builds (its progress monitor is held until the cancel has been posted)."""
    jobs = webui.module("trt_lib.jobs.job_queue")
    building, cancel_posted = threading.Event(), threading.Event()
    report = jobs.Job.report

    def held_report(self, stage: str, fraction: float) -> None:
        report(self, stage, fraction)
        if stage.startswith("building: ") and not building.is_set():
            building.set()
            cancel_posted.wait(30)

    monkeypatch.setattr(jobs.Job, "report", held_report)
    job_id = client.post("/tensorrt/v1/builds", json={"preset": "static-512"}).json()["job_id"]
    assert building.wait(60), "the build never reached TensorRT's build phases"
    assert client.get(f"/tensorrt/v1/builds/{job_id}").json()["state"] == "running"
    r = client.post(f"/tensorrt/v1/builds/{job_id}/cancel")
    cancel_posted.set()
    assert r.status_code == 200 and r.json() == {"cancelled": True}
    job = webui.EXT.jobs.wait(job_id, timeout=60)
    assert job.state == "cancelled" and "nothing was written" in job.message
    assert client.get(f"/tensorrt/v1/builds/{job_id}").json()["engine_id"] is None
    assert webui.EXT.store.entries() == [] and client.get("/tensorrt/v1/engines").json()["engines"] == []
    files = store_files(webui)
    assert not [f for f in files if f.endswith(".engine") or ".partial" in f or ".tmp" in f], files
    assert [f for f in files if not f.startswith(("onnx/", "cache/graphs/"))] in ([], ["manifest.json.lock"]), files
    assert client.get("/tensorrt/v1/unets").json() == {"sd_unet": ["Automatic", "None"]}
    # the export is kept for the next build, which then succeeds
    job_id = client.post("/tensorrt/v1/builds", json={"preset": "static-512"}).json()["job_id"]
    assert webui.EXT.jobs.wait(job_id, timeout=120).state == "done"
    assert len(webui.EXT.store.entries()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_without_a_gpu_or_a_target_a_build_is_refused_before_the_export(client, webui):
    """Issue 11, defect 8: such a build used to be accepted and fail after the export."""
    webui.shared.opts.set("trt_compute_capability", "")
    r = client.post("/tensorrt/v1/builds", json={"preset": "static-512"})
    assert r.status_code == 422, r.text
    assert 'Settings → TensorRT → "Build for compute capability"' in r.json()["detail"]
    assert webui.EXT.jobs.jobs() == [] and store_files(webui) == []
    tab = webui.module("trt_webui.tab")
    preset = webui.module("trt_lib.model.families").get_family("sd1").preset("static-512").label
    answer, job_id, _ = tab.build(None, preset, "", False, False, *[0] * 12)
    assert answer.startswith("⚠ ") and '"Build for compute capability"' in answer and job_id == ""
    assert webui.EXT.jobs.jobs() == [] and store_files(webui) == []


@pytest.mark.catalogue("files")
def test_rebuild_after_the_checkpoint_was_replaced(client, webui):
    """The checkpoint file overwritten by other weights: its engine is not offered, Rebuild builds the same
    profile from the new weights and replaces it."""
    job_id = client.post("/tensorrt/v1/builds", json={"preset": "static-512"}).json()["job_id"]
    old = webui.EXT.store.get(webui.EXT.jobs.wait(job_id, timeout=120).result.id)
    webui.add_checkpoint(CHECKPOINT, "sd1", seed=1)
    webui.add_checkpoint("other.safetensors", "sd1")
    webui.load("other.safetensors")
    webui.load(CHECKPOINT)
    listed = client.get("/tensorrt/v1/engines").json()["engines"]
    assert [(e["id"], e["usable"]) for e in listed] == [(old.id, False)] and "another version" in listed[0]["problem"]
    r = client.post(f"/tensorrt/v1/engines/{old.id}/rebuild")
    assert r.status_code == 200, r.text
    job = webui.EXT.jobs.wait(r.json()["job_id"], timeout=120)
    assert job.state == "done", job.message
    (new,) = webui.EXT.store.entries()
    assert new.id != old.id and new.profiles == old.profiles and new.onnx_file != old.onnx_file
    assert new.checkpoint_hash == webui.sd_models.get_closet_checkpoint_match(CHECKPOINT).sha256 != old.checkpoint_hash
    assert not webui.EXT.store.engine_path(old).exists() and webui.EXT.listing().problems.get(new.id) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU builds refittable engines")
def test_a_refit_build_without_a_gpu_is_refused_before_the_export(client, webui):
    """TensorRT for RTX 1.7 builds refittable engines only with a GPU: the request is refused at once, what to
    do first, instead of failing at the end of the build with a Myelin error."""
    r = client.post("/tensorrt/v1/builds", json={"preset": "static-512", "refit": True})
    detail = r.json()["detail"]
    assert r.status_code == 422 and detail.startswith('Build without "Switch prompt LoRAs without a rebuild"')
    assert "need a CUDA GPU while building with TensorRT for RTX" in detail
    assert not webui.EXT.jobs.jobs() and store_files(webui) == []
