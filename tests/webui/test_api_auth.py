"""The extension's routes follow the WebUI's API rules: served only with ``--api`` or ``--nowebui``, and behind
``--api-auth`` (HTTP Basic, several ``user:password`` pairs) exactly as the WebUI's own routes are.

Every route is enumerated from the started app, so a route added without the WebUI's rules fails here.
"""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

PREFIX = "/tensorrt/v1"
SMALL = {"batch": [1, 1, 2], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 75]}
USERS = {"tester": "secret", "other": "pa ss"}
AUTH = ",".join(f"{user}:{password}" for user, password in USERS.items())
WRONG = [None, ("tester", "wrong"), ("tester", "pa ss"), ("nobody", "secret"), ("", "")]
"""No credentials, a wrong password, another user's password, an unknown user, empty ones."""


@pytest.fixture
def webui_engine(webui):
    webui.with_engine("sd15.safetensors", "sd1", SMALL)
    webui.engine = webui.EXT.store.entries()[0]
    return webui


def routes(app: FastAPI, prefix: str = PREFIX) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves under ``prefix``."""
    return sorted((method, r.path) for r in app.routes if isinstance(r, APIRoute) and r.path.startswith(prefix)
                  for method in r.methods)


def call(client: TestClient, method: str, path: str, auth: tuple[str, str] | None, fill: str):
    """Call a route with each path parameter set to ``fill`` and a body that passes validation where one
    is read (a preset build, a fit question), so that only the credentials decide whether it runs."""
    url = re.sub(r"\{[^}]+\}", fill, path)
    body = {"preset": "static-512"} if path.endswith("/builds") else {} if method == "POST" else None
    return client.request(method, url, json=body, auth=auth)


@pytest.mark.catalogue("api")
@pytest.mark.parametrize("argv", [(), ("--api-auth", AUTH)])
def test_without_api_no_route_is_served(webui_engine, argv):
    app = webui_engine.start(*argv)
    assert routes(app, "/") == []  # neither the WebUI's API nor the extension's
    client = TestClient(app)
    assert client.get(f"{PREFIX}/engines").status_code == 404
    assert client.delete(f"{PREFIX}/engines/{webui_engine.engine.id}").status_code == 404
    assert client.post(f"{PREFIX}/builds", json={"preset": "static-512"}).status_code == 404
    assert [e.id for e in webui_engine.EXT.store.entries()] == [webui_engine.engine.id]


@pytest.mark.catalogue("api")
@pytest.mark.parametrize("flag", ["--api", "--nowebui"])
def test_with_the_api_every_route_is_served(webui_engine, flag):
    app = webui_engine.start(flag)
    declared = sorted((m, PREFIX + p) for m, p, _ in webui_engine.module("trt_webui.api").ROUTES)
    assert routes(app) == declared and len(declared) >= 8
    engines = TestClient(app).get(f"{PREFIX}/engines")
    assert engines.status_code == 200 and engines.json()["engines"][0]["id"] == webui_engine.engine.id


@pytest.mark.catalogue("api")
@pytest.mark.parametrize("flag", ["--api", "--nowebui"])
def test_with_api_auth_no_route_answers_without_valid_credentials(webui_engine, flag):
    app = webui_engine.start(flag, "--api-auth", AUTH)
    client = TestClient(app)
    served = routes(app)
    assert ("DELETE", f"{PREFIX}/engines/{{engine_id}}") in served and ("POST", f"{PREFIX}/builds") in served
    for auth in WRONG:
        webui_own = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat"}, auth=auth)
        assert webui_own.status_code == 401
        for method, path in served:
            r = call(client, method, path, auth, webui_engine.engine.id)
            assert (r.status_code, r.json()) == (401, webui_own.json()), (method, path, auth)
    assert set(webui_own.json()) == {"error", "detail", "body", "errors"}
    assert [e.id for e in webui_engine.EXT.store.entries()] == [webui_engine.engine.id]  # not deleted


@pytest.mark.catalogue("api")
def test_with_api_auth_each_user_reaches_every_route(webui_engine):
    webui_engine.module("trt_webui.api").route("POST", "/later")(lambda: {"done": True})  # a route added later
    client = TestClient(webui_engine.start("--api", "--api-auth", AUTH))
    assert client.post(f"{PREFIX}/later").status_code == 401
    for user, password in USERS.items():
        engines = client.get(f"{PREFIX}/engines", auth=(user, password))
        assert engines.status_code == 200 and engines.json()["engines"][0]["id"] == webui_engine.engine.id
        assert client.get(f"{PREFIX}/unets", auth=(user, password)).json()["sd_unet"][1] == "[TRT] sd15"
        missing = client.post(f"{PREFIX}/builds/nope/cancel", auth=(user, password))
        assert missing.status_code == 404 and missing.json()["detail"] == "no build job 'nope'"
        assert set(missing.json()) == {"error", "detail", "body", "errors"}
        assert client.post(f"{PREFIX}/later", auth=(user, password)).json() == {"done": True}
    build = client.post(f"{PREFIX}/builds", json={"preset": "static-512"}, auth=("other", USERS["other"]))
    assert build.status_code == 503 and "pip install" in build.json()["detail"]  # processed: no backend here
    gone = client.delete(f"{PREFIX}/engines/{webui_engine.engine.id}", auth=("tester", USERS["tester"]))
    assert gone.status_code == 200 and gone.json() == {"deleted": webui_engine.engine.id}
    assert webui_engine.EXT.store.entries() == []
