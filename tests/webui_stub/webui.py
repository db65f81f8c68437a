"""Mirrors the WebUI's webui.py where the extension meets it: which app serves the API and when the
``app_started`` callbacks fire. ``start`` picks ``api_only`` under ``--nowebui`` (lines 156-162, as
launch_utils.start does), else ``webui``. ``api_only`` (26-38) makes a FastAPI app, always creates the
``Api`` on it, runs the ``before_ui`` callbacks, then ``app_started_callback(None, app)``. ``webui`` (48-119)
creates the ``Api`` on the UI's app only under ``--api`` (lines 51, 111-112), then calls
``app_started_callback(shared.demo, app)``. Neither keeps the ``Api`` anywhere an extension could read it
(``create_api``'s result is dropped, or local to ``api_only``).

Left out: model loading, middleware, server launch. The stand-in builds no Gradio UI, so its ``webui``'s app
is a plain FastAPI app standing in for the one ``shared.demo.launch`` returns, and ``shared.demo`` stays
None. Each returns the app, to be served with ``fastapi.testclient``.
"""

from __future__ import annotations

from fastapi import FastAPI


def create_api(app: FastAPI) -> object:
    from modules.api.api import Api
    from modules.call_queue import queue_lock

    api = Api(app, queue_lock)
    return api


def api_only() -> FastAPI:
    from modules import script_callbacks

    app = FastAPI()
    create_api(app)
    script_callbacks.before_ui_callback()
    script_callbacks.app_started_callback(None, app)
    return app


def webui() -> FastAPI:
    from modules import script_callbacks, shared
    from modules.shared_cmd_options import cmd_opts

    launch_api = cmd_opts.api
    script_callbacks.before_ui_callback()
    app = FastAPI()  # what shared.demo.launch(...) returns
    if launch_api:
        create_api(app)
    script_callbacks.app_started_callback(shared.demo, app)
    return app


def start() -> FastAPI:
    from modules.shared_cmd_options import cmd_opts

    if cmd_opts.nowebui:
        return api_only()
    return webui()
