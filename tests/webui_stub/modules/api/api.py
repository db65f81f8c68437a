"""Mirrors modules/api/api.py where the extension meets it: ``api_middleware`` (lines 135-196) turns any
exception into a JSON answer ``{"error", "detail", "body", "errors"}`` whose status is the exception's own
``status_code`` (read from the instance's ``vars``, 500 otherwise; an exception's headers are not kept);
``Api.__init__`` (200-211) reads ``--api-auth`` as comma-separated ``user:password`` pairs, and
``Api.add_api_route`` (274-277) puts every route behind ``Api.auth`` (279-284, HTTP Basic, passwords compared
with ``secrets.compare_digest``) when it is set; ``POST /sdapi/v1/txt2img`` runs a job under the queue lock
with ``override_settings``. Each route's endpoint is a bound method of the ``Api``, as in the WebUI."""

from __future__ import annotations

from secrets import compare_digest
from threading import Lock
from typing import Any, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, Field

from modules import errors, scripts, shared
from modules.processing import StableDiffusionProcessingTxt2Img, process_images


def api_middleware(app: FastAPI) -> None:
    def handle_exception(request: Request, e: Exception) -> JSONResponse:
        err = {
            "error": type(e).__name__,
            "detail": vars(e).get("detail", ""),
            "body": vars(e).get("body", ""),
            "errors": str(e),
        }
        if not isinstance(e, HTTPException):
            errors.report(f"API error: {request.method}: {request.url} {err}", exc_info=True)
        return JSONResponse(status_code=vars(e).get("status_code", 500), content=jsonable_encoder(err))

    @app.middleware("http")
    async def exception_handling(request: Request, call_next: Any) -> Any:
        try:
            return await call_next(request)
        except Exception as e:
            return handle_exception(request, e)

    @app.exception_handler(Exception)
    async def fastapi_exception_handler(request: Request, e: Exception) -> JSONResponse:
        return handle_exception(request, e)

    @app.exception_handler(HTTPException)
    async def http_exception_handler(request: Request, e: HTTPException) -> JSONResponse:
        return handle_exception(request, e)


class Txt2ImgRequest(BaseModel):
    """The fields of StableDiffusionTxt2ImgProcessingAPI the stand-in's processing has."""

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 4
    cfg_scale: float = 7.0
    width: int = 64
    height: int = 64
    sampler_name: str = "Euler"
    denoising_strength: Optional[float] = None
    s_min_uncond: Optional[float] = None
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_second_pass_steps: int = 0
    override_settings: Optional[dict[str, Any]] = None
    override_settings_restore_afterwards: bool = True


class Txt2ImgResponse(BaseModel):
    images: list[str] = Field(description="The stand-in has no VAE: one entry per batch, the latent's shape")
    parameters: dict
    info: str


class Api:
    def __init__(self, app: FastAPI, queue_lock: Lock) -> None:
        if shared.cmd_opts.api_auth:
            self.credentials = {}
            for auth in shared.cmd_opts.api_auth.split(","):
                user, password = auth.split(":")
                self.credentials[user] = password

        self.app = app
        self.queue_lock = queue_lock
        api_middleware(self.app)
        self.add_api_route("/sdapi/v1/txt2img", self.text2imgapi, methods=["POST"], response_model=Txt2ImgResponse)

    def add_api_route(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        if shared.cmd_opts.api_auth:
            return self.app.add_api_route(path, endpoint, dependencies=[Depends(self.auth)], **kwargs)
        return self.app.add_api_route(path, endpoint, **kwargs)

    def auth(self, credentials: HTTPBasicCredentials = Depends(HTTPBasic())) -> bool:  # noqa: B008 - as the WebUI
        if credentials.username in self.credentials:
            if compare_digest(credentials.password, self.credentials[credentials.username]):
                return True

        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    def text2imgapi(self, txt2imgreq: Txt2ImgRequest) -> Txt2ImgResponse:
        args = txt2imgreq.dict()
        with self.queue_lock:
            p = StableDiffusionProcessingTxt2Img(sd_model=shared.sd_model, **args)
            p.is_api = True
            p.scripts = scripts.scripts_txt2img
            p.script_args = ()
            try:
                shared.state.begin(job="scripts_txt2img")
                processed = process_images(p)
            finally:
                shared.state.end()
                p.close()
        return Txt2ImgResponse(images=[str(list(x.shape)) for x in processed.images],
                               parameters=txt2imgreq.dict(), info=processed.js())
