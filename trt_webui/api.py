"""HTTP API: list, build, watch and delete engines; list the sd_unet choices; ask whether settings fit.

Routes live under ``/tensorrt/v1``. Bodies are validated (unknown fields refused) and every library error
becomes a 4xx/5xx answer with the user-facing message as ``detail``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from fastapi import FastAPI, HTTPException
from modules import shared_items
from pydantic import BaseModel, Extra, Field

from trt_lib.errors import TrtError
from trt_lib.profiles import Profile

from . import loaded_model
from .extension import EXT
from .fit_check import FitQuestion, check_fit

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
    weight: float = Field(1.0, description="UNet weight")

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


class ApiError(HTTPException):
    """An HTTP error whose text is its message: the WebUI's middleware answers ``{"detail": …, "errors":
    str(e)}`` and prints a traceback for anything that is not an ``HTTPException``, which a user's bad
    request should not cause."""

    def __str__(self) -> str:
        return str(self.detail)


def _fail(error: TrtError) -> ApiError:
    return ApiError(status_code=error.status_code, detail=str(error))


def engines() -> dict[str, Any]:
    try:
        listing = EXT.listing()
    except TrtError as e:
        raise _fail(e) from e
    return {"engines": [{**e.to_dict(), "usable": e.id not in listing.problems, "runs_here": not listing.status[e.id],
                         "problem": listing.status[e.id]} for e in listing.entries],
            "problems": [{"id": k, "reason": v} for k, v in listing.problems.items() if k not in listing.status]}


def unets(refresh: bool = True) -> dict[str, list[str]]:
    if refresh:
        EXT.refresh_unets()
    return {"sd_unet": shared_items.sd_unet_items()}


def presets() -> dict[str, Any]:
    try:
        model = loaded_model.current()
    except TrtError as e:
        raise _fail(e) from e
    return {"checkpoint": model.checkpoint, "family": model.family.name,
            "presets": [{"name": p.name, "label": p.label, "default": p.default, **p.profile.to_dict()}
                        for p in model.family.presets]}


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


def build_status(job_id: str) -> dict[str, Any]:
    job = EXT.jobs.get(job_id)
    if job is None:
        raise ApiError(404, f"no build job {job_id!r}")
    result = job.result.id if job.finished_ok and job.result is not None else None
    return {**job.to_dict(), "engine_id": result}


def cancel_build(job_id: str) -> dict[str, bool]:
    if EXT.jobs.get(job_id) is None:
        raise ApiError(404, f"no build job {job_id!r}")
    return {"cancelled": EXT.jobs.cancel(job_id)}


def delete_engine(engine_id: str) -> dict[str, str]:
    try:
        if engine_id not in {e.id for e in EXT.store.entries()}:
            raise ApiError(404, f"no engine {engine_id!r}")
        return {"deleted": EXT.delete(engine_id).id}
    except TrtError as e:
        raise _fail(e) from e


def fit(body: FitBody) -> dict[str, Any]:
    try:
        return check_fit(FitQuestion(**body.dict())).to_dict()
    except TrtError as e:
        raise _fail(e) from e


def on_app_started(_demo: Any, app: FastAPI) -> None:
    """Register the routes (on_app_started callback)."""
    app.add_api_route(f"{PREFIX}/engines", engines, methods=["GET"])
    app.add_api_route(f"{PREFIX}/engines/{{engine_id}}", delete_engine, methods=["DELETE"])
    app.add_api_route(f"{PREFIX}/unets", unets, methods=["GET"])
    app.add_api_route(f"{PREFIX}/presets", presets, methods=["GET"])
    app.add_api_route(f"{PREFIX}/builds", start_build, methods=["POST"])
    app.add_api_route(f"{PREFIX}/builds/{{job_id}}", build_status, methods=["GET"])
    app.add_api_route(f"{PREFIX}/builds/{{job_id}}/cancel", cancel_build, methods=["POST"])
    app.add_api_route(f"{PREFIX}/fit", fit, methods=["POST"])
