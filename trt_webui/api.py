"""HTTP API: list, build, rebuild, watch and delete engines; adopt or delete engine files the manifest lost;
list the sd_unet choices; ask whether settings fit.

Routes live under ``/tensorrt/v1`` and are served only where the WebUI serves its API (``--api`` or
``--nowebui``), registered through its own ``Api`` (:mod:`.webui_api`): behind its ``--api-auth`` check, with
its error shape. Bodies are validated (unknown fields refused) and every library error becomes a 4xx/5xx
answer with the user-facing message as ``detail``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, Union

from fastapi import FastAPI, HTTPException
from modules import shared_items
from pydantic import BaseModel, Extra, Field

from trt_lib.errors import TrtError
from trt_lib.model.profiles import Profile

from . import engine_check, loaded_model
from .extension import EXT
from .fit_check import FitQuestion, check_fit
from .lora_bake import WEIGHTS
from .webui_api import find_api

PREFIX = "/tensorrt/v1"
Dim = Union[int, list[int]]


class ProfileBody(BaseModel):
    batch: Dim = Field(..., description="images per batch: n or [min, opt, max]")
    height: Dim = Field(..., description="pixels, multiples of 64")
    width: Dim = Field(..., description="pixels, multiples of 64")
    tokens: Dim = Field(75, description="prompt tokens, multiples of 75")

    class Config:
        extra = Extra.forbid


class LoraBody(BaseModel):
    name: str = Field(..., description="a LoRA name as in <lora:name:weight>")
    weight: float = Field(1.0, description=f"UNet weight, {WEIGHTS}")

    class Config:
        extra = Extra.forbid


class BuildBody(BaseModel):
    preset: Optional[str] = Field(None, description="a preset name from GET /presets")
    profiles: list[ProfileBody] = Field(default_factory=list, description="custom profiles (one engine)")
    loras: list[LoraBody] = Field(default_factory=list, description="LoRAs baked into the engine (UNet part)")
    refit: bool = Field(False, description="refittable engine: prompt LoRAs switch without a rebuild (slower "
                                           "engine; TensorRT for RTX then needs the GPU while building)")
    controlnet: bool = Field(False, description="ControlNet-ready engine: takes the ControlNet extension's "
                                                "residuals (also runs jobs without ControlNet)")

    class Config:
        extra = Extra.forbid


class CheckBody(BaseModel):
    seed: int = Field(0, description="seed of the random inputs (one per shape: seed, seed+1, ...)")

    class Config:
        extra = Extra.forbid


class FitBody(BaseModel):
    width: int = 512
    height: int = 512
    batch_size: int = 1
    enable_hr: bool = False
    hr_scale: float = 2.0
    prompt_tokens: int = 75
    negative_tokens: int = 75

    class Config:
        extra = Extra.forbid


ROUTES: list[tuple[str, str, Callable[..., Any]]] = []
"""Every route of the extension: method, path under :data:`PREFIX`, endpoint; filled by :func:`route`."""


def route(method: str, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an endpoint as a route: the one way routes are added, so that each gets the WebUI's API rules."""
    def declare(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        ROUTES.append((method, path, endpoint))
        return endpoint
    return declare


class ApiError(HTTPException):
    """An HTTP error whose text is its message: the WebUI's middleware answers ``{"detail": …, "errors":
    str(e)}`` and prints a traceback for anything that is not an ``HTTPException``, which a user's bad
    request should not cause."""

    def __str__(self) -> str:
        return str(self.detail)


def _fail(error: TrtError) -> ApiError:
    return ApiError(status_code=error.status_code, detail=str(error))


@route("GET", "/engines")
def engines() -> dict[str, Any]:
    try:
        listing = EXT.listing()
    except TrtError as e:
        raise _fail(e) from e
    return {"engines": [{**e.to_dict(), "usable": e.id not in listing.problems, "runs_here": not listing.status[e.id],
                         "problem": listing.status[e.id]} for e in listing.entries],
            "problems": [{"id": k, "reason": v} for k, v in listing.problems.items() if k not in listing.status]}


@route("GET", "/unets")
def unets(refresh: bool = True) -> dict[str, list[str]]:
    if refresh:
        EXT.refresh_unets()
    return {"sd_unet": shared_items.sd_unet_items()}


@route("GET", "/presets")
def presets() -> dict[str, Any]:
    try:
        model = loaded_model.current()
    except TrtError as e:
        raise _fail(e) from e
    return {"checkpoint": model.checkpoint, "family": model.family.name,
            "presets": [{"name": p.name, "label": p.label, "default": p.default, **p.profile.to_dict()}
                        for p in model.family.presets]}


@route("POST", "/builds")
def start_build(body: BuildBody) -> dict[str, str]:
    try:
        if bool(body.preset) == bool(body.profiles):
            raise ApiError(422, "give either a preset or profiles, not both or neither")
        if body.preset:
            profiles = [loaded_model.current().family.preset(body.preset).profile]
        else:
            profiles = [Profile.from_dict(p.dict()) for p in body.profiles]
        job = EXT.submit_build(profiles, [lo.dict() for lo in body.loras], refit=body.refit,
                               controlnet=body.controlnet)
    except TrtError as e:
        raise _fail(e) from e
    return {"job_id": job.id}


@route("GET", "/builds/{job_id}")
def build_status(job_id: str) -> dict[str, Any]:
    job = EXT.jobs.get(job_id)
    if job is None:
        raise ApiError(404, f"no build job {job_id!r}")
    result = job.result.id if job.finished_ok and job.result is not None else None
    return {**job.to_dict(), "engine_id": result}


@route("POST", "/builds/{job_id}/cancel")
def cancel_build(job_id: str) -> dict[str, bool]:
    if EXT.jobs.get(job_id) is None:
        raise ApiError(404, f"no build job {job_id!r}")
    return {"cancelled": EXT.jobs.cancel(job_id)}


@route("DELETE", "/engines/{engine_id}")
def delete_engine(engine_id: str) -> dict[str, str]:
    try:
        if engine_id not in {e.id for e in EXT.store.entries()}:
            raise ApiError(404, f"no engine {engine_id!r}")
        return {"deleted": EXT.delete(engine_id).id}
    except TrtError as e:
        raise _fail(e) from e


@route("POST", "/engines/{engine_id}/rebuild")
def rebuild_engine(engine_id: str) -> dict[str, str]:
    try:
        if engine_id not in {e.id for e in EXT.store.entries()}:
            raise ApiError(404, f"no engine {engine_id!r}")
        return {"job_id": EXT.rebuild(engine_id).id}
    except TrtError as e:
        raise _fail(e) from e


def _stray_file(name: str) -> str:
    """``name`` when it is an engine file the manifest does not know; 404 otherwise."""
    if name not in EXT.store.strays():
        raise ApiError(404, f"no engine file {name!r} outside the manifest (engines in it are deleted by id)")
    return name


@route("POST", "/engines/files/{name}/adopt")
def adopt_file(name: str) -> dict[str, str]:
    try:
        return {"adopted": EXT.adopt_file(_stray_file(name)).id}
    except TrtError as e:
        raise _fail(e) from e


@route("DELETE", "/engines/files/{name}")
def delete_file(name: str) -> dict[str, str]:
    try:
        return {"deleted": EXT.delete_file(_stray_file(name))}
    except TrtError as e:
        raise _fail(e) from e


@route("POST", "/engines/{engine_id}/check")
def check_engine(engine_id: str, body: Optional[CheckBody] = None) -> dict[str, Any]:
    """Check an engine against the loaded PyTorch UNet; the report is also kept in the engine list."""
    try:
        entry, report = engine_check.check(engine_id, seed=(body or CheckBody()).seed)
    except TrtError as e:
        raise _fail(e) from e
    return {"id": entry.id, **report.to_dict()}


@route("POST", "/fit")
def fit(body: FitBody) -> dict[str, Any]:
    try:
        return check_fit(FitQuestion(**body.dict())).to_dict()
    except TrtError as e:
        raise _fail(e) from e


def on_app_started(_demo: Any, app: FastAPI) -> None:
    """Register every route through the WebUI's ``Api`` (on_app_started callback); none where it serves no API."""
    webui_api = find_api(app)
    if webui_api is None:
        return
    for method, path, endpoint in ROUTES:
        webui_api.add_api_route(PREFIX + path, endpoint, methods=[method])
