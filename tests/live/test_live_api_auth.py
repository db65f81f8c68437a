"""Issue 13: with ``--api-auth``, no route of the extension answers without valid credentials.

The routes are read from the server's own ``/openapi.json``, so a route added later is covered too. Path
parameters get an id that names nothing, and bodies are empty: with the right credentials each route answers
(200, or its own 404/422), so nothing is deleted or built.
"""

from __future__ import annotations

import os
import re

import httpx
import pytest
from live_webui import TRT, auth_from_env, message

pytestmark = pytest.mark.live

NO_SUCH_ID = "livetest-no-such-id"


def _requires_auth() -> tuple[str, str]:
    auth = auth_from_env()
    if auth is None:
        pytest.skip("WEBUI_AUTH is not set: start the WebUI with --api-auth user:pass and set WEBUI_AUTH=user:pass")
    return auth


def _routes(http: httpx.Client) -> list[tuple[str, str]]:
    r = http.get("/openapi.json")
    assert r.status_code == 200, f"GET /openapi.json: HTTP {r.status_code}"
    routes = [(method.upper(), path) for path, methods in r.json()["paths"].items() if path.startswith(TRT)
              for method in methods]
    assert routes, f"the server lists no {TRT} route in /openapi.json: is the extension loaded?"
    return sorted(routes)


def _call(http: httpx.Client, method: str, path: str, auth: tuple[str, str] | None) -> httpx.Response:
    url = re.sub(r"\{[^}]+\}", NO_SUCH_ID, path)
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return http.request(method, url, json=body, auth=auth)


@pytest.fixture(scope="module")
def http() -> httpx.Client:
    with httpx.Client(base_url=os.environ["WEBUI_URL"].rstrip("/"), timeout=60.0) as client:
        yield client


def test_the_webui_itself_demands_credentials(http: httpx.Client) -> None:
    """Precondition: the server really runs with ``--api-auth`` (else the tests below prove nothing)."""
    _requires_auth()
    assert http.get("/sdapi/v1/sd-models").status_code == 401, "WEBUI_AUTH is set, but the WebUI was not started " \
                                                               "with --api-auth"


@pytest.mark.parametrize("credentials", ["none", "wrong password", "unknown user"])
def test_every_extension_route_refuses_missing_or_wrong_credentials(http: httpx.Client, credentials: str) -> None:
    user, password = _requires_auth()
    auth = {"none": None, "wrong password": (user, password + "-wrong"), "unknown user": (user + "-nobody", password)}
    answered = {}
    for method, path in _routes(http):
        r = _call(http, method, path, auth[credentials])
        if r.status_code != 401:
            answered[f"{method} {path}"] = f"HTTP {r.status_code}: {message(r)[:120]}"
    assert not answered, f"with {credentials} credentials these routes answered instead of 401: {answered}"


def test_every_extension_route_works_with_the_right_credentials(http: httpx.Client) -> None:
    auth = _requires_auth()
    refused = {}
    for method, path in _routes(http):
        r = _call(http, method, path, auth)
        plain_get = method == "GET" and "{" not in path
        if r.status_code in (401, 403) or r.status_code >= 500 or (plain_get and r.status_code != 200):
            refused[f"{method} {path}"] = f"HTTP {r.status_code}: {message(r)[:120]}"
    assert not refused, f"with the right credentials these routes did not answer as the route: {refused}"
