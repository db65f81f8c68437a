"""A client of a running WebUI for the live tests: its own API and this extension's, over plain HTTP.

Nothing here starts or installs a WebUI; the tests talk to one the user started (see README.md here).
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

TRT = "/tensorrt/v1"
BUILD_TIMEOUT_S = float(os.environ.get("WEBUI_BUILD_TIMEOUT", "900"))
PREFIX = "livetest"
"""Names of checkpoints, LoRAs and engines these tests make start with this, so they are easy to spot."""


def auth_from_env() -> tuple[str, str] | None:
    """``WEBUI_AUTH=user:pass`` (the credentials given to ``--api-auth``), or None."""
    value = os.environ.get("WEBUI_AUTH", "")
    if not value:
        return None
    user, _, password = value.partition(":")
    return user, password


def message(response: httpx.Response) -> str:
    """The user-facing text of an error answer: the WebUI's middleware puts it in ``detail`` (an
    HTTPException's) or ``errors`` (``str`` of any other exception)."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    if not isinstance(body, dict):
        return str(body)
    detail = body.get("detail")
    return str(detail if detail else body.get("errors", body))


class Webui:
    """The WebUI at ``url``; every call carries the credentials of ``WEBUI_AUTH`` when set."""

    def __init__(self, url: str, auth: tuple[str, str] | None) -> None:
        self.url = url.rstrip("/")
        self.auth = auth
        self.http = httpx.Client(base_url=self.url, auth=auth, timeout=httpx.Timeout(600.0, connect=10.0))

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, **kw: Any) -> Any:
        r = self.http.get(path, **kw)
        assert r.status_code == 200, f"GET {path}: HTTP {r.status_code}: {message(r)}"
        return r.json()

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        r = self.http.post(path, json=body, **kw)
        assert r.status_code == 200, f"POST {path}: HTTP {r.status_code}: {message(r)}"
        return r.json()

    # -- the WebUI's own API ------------------------------------------------------------------------

    def options(self) -> dict[str, Any]:
        return self.get("/sdapi/v1/options")

    def set_options(self, values: dict[str, Any]) -> None:
        self.post("/sdapi/v1/options", values)

    def checkpoints(self) -> list[dict[str, Any]]:
        return self.get("/sdapi/v1/sd-models")

    def loaded_checkpoint(self) -> dict[str, Any]:
        """The ``sd-models`` entry of the loaded checkpoint (its ``filename`` is a path on this machine).

        Read from the extension (the loaded model itself), not from the ``sd_model_checkpoint`` option: with
        ``--ckpt``, every checkpoint refresh sets that option to the ``--ckpt`` title without loading it
        (modules/sd_models.py ``list_models``)."""
        name = self.get(f"{TRT}/presets")["checkpoint"]
        found = [m for m in self.checkpoints() if m["model_name"] == name]
        assert found, f"the loaded checkpoint {name!r} is not among {[m['title'] for m in self.checkpoints()]}"
        return found[0]

    def load_checkpoint(self, model_name: str) -> None:
        """Load a checkpoint by name, through a one-step job that overrides ``sd_model_checkpoint``: unlike the
        options route, that compares with the model actually loaded (``reload_model_weights``)."""
        self.post("/sdapi/v1/refresh-checkpoints")
        titles = [m["title"] for m in self.checkpoints() if m["model_name"] == model_name]
        assert titles, f"no checkpoint {model_name!r} after refreshing the list"
        r = self.txt2img("load", sd_unet="None", steps=1, override_settings_restore_afterwards=False,
                         override_settings={"sd_model_checkpoint": titles[0], "sd_unet": "None"})
        assert r.status_code == 200, f"loading {model_name}: HTTP {r.status_code}: {message(r)}"
        loaded = self.loaded_checkpoint()["model_name"]
        assert loaded == model_name, f"loaded {loaded!r}, not {model_name!r}"

    def txt2img(self, prompt: str, *, sd_unet: str, **fields: Any) -> httpx.Response:
        """A small job (64 px, 2 steps, fixed seed) on the UNet ``sd_unet`` ("None" = PyTorch)."""
        body = {"prompt": prompt, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 1,
                "cfg_scale": 7.0, "override_settings": {"sd_unet": sd_unet}}
        body.update(fields)
        return self.http.post("/sdapi/v1/txt2img", json=body)

    def txt2img_pixels(self, prompt: str, *, sd_unet: str = "None", **fields: Any) -> bytes:
        """The first image's RGB pixels (not the PNG: its infotext differs with every prompt)."""
        from PIL import Image

        r = self.txt2img(prompt, sd_unet=sd_unet, **fields)
        assert r.status_code == 200, f"txt2img: HTTP {r.status_code}: {message(r)}"
        image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0].split(",", 1)[-1])))
        return image.convert("RGB").tobytes()

    # -- the extension's API ------------------------------------------------------------------------

    def engines(self) -> list[dict[str, Any]]:
        return self.get(f"{TRT}/engines")["engines"]

    def engine(self, engine_id: str) -> dict[str, Any]:
        found = [e for e in self.engines() if e["id"] == engine_id]
        assert found, f"engine {engine_id} is not in GET {TRT}/engines"
        return found[0]

    def unet_choices(self) -> list[str]:
        return self.get(f"{TRT}/unets")["sd_unet"]

    def engine_label(self, checkpoint: str) -> str:
        """The ``sd_unet`` entry of a checkpoint's engines: ``[TRT] name``, or ``[ORT] name`` when the
        extension runs engines on the ONNX Runtime reference runtime (Settings → TensorRT)."""
        found = [c for c in self.unet_choices() if c in (f"[TRT] {checkpoint}", f"[ORT] {checkpoint}")]
        assert found, f"no engine entry of {checkpoint} in {self.unet_choices()}"
        return found[0]

    def build(self, profile: dict[str, Any], loras: list[dict[str, Any]] | None = None,
              controlnet: bool = False) -> dict[str, Any]:
        """Build an engine for the loaded checkpoint (ControlNet-ready when asked) and wait for it; its
        ``GET /engines`` entry."""
        job = self.post(f"{TRT}/builds", {"profiles": [profile], "loras": loras or [],
                                          "controlnet": controlnet})["job_id"]
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while True:
            state = self.get(f"{TRT}/builds/{job}")
            if state["state"] not in ("queued", "running"):
                break
            assert time.monotonic() < deadline, f"build {job} still {state['state']} after {BUILD_TIMEOUT_S:.0f} s"
            time.sleep(1.0)
        assert state["state"] == "done" and state.get("engine_id"), f"build failed: {state}"
        return self.engine(state["engine_id"])

    def delete_engine(self, engine_id: str) -> None:
        r = self.http.delete(f"{TRT}/engines/{engine_id}")
        assert r.status_code in (200, 404), f"DELETE engine {engine_id}: HTTP {r.status_code}: {message(r)}"


def engine_dir(webui: Webui) -> Path:
    """Where the extension keeps engines: ``WEBUI_ENGINE_DIR``, else its "Folder for engines" setting."""
    configured = os.environ.get("WEBUI_ENGINE_DIR") or webui.options().get("trt_engine_dir")
    assert configured, "set WEBUI_ENGINE_DIR: the WebUI's options do not list trt_engine_dir"
    return Path(configured)


@contextmanager
def built(webui: Webui, profile: dict[str, Any], loras: list[dict[str, Any]] | None = None,
          controlnet: bool = False) -> Iterator[dict[str, Any]]:
    """An engine built for the test and deleted after it, whatever the test did."""
    entry = webui.build(profile, loras, controlnet)
    try:
        yield entry
    finally:
        webui.delete_engine(entry["id"])


STATIC_64 = {"batch": 1, "height": 64, "width": 64, "tokens": 75}
"""The smallest engine: one image of 64x64 px, prompts up to 75 tokens."""
