"""Find the WebUI's own ``Api`` serving an app, so that the extension's routes get its rules.

WebUI v1.10.1 creates ``modules.api.api.Api`` only where it serves its API (webui.py: ``webui()`` under
``--api``, ``api_only()`` under ``--nowebui``) and keeps it nowhere an extension can read (not in
``modules.shared``; ``create_api``'s result is dropped). Its routes lead to it: each endpoint is a bound
method of that ``Api``. Registering through its ``add_api_route`` puts a route behind the WebUI's own
``--api-auth`` check (``Api.auth``, the same credentials), with errors shaped by its middleware.
"""

from __future__ import annotations

from typing import Any, Optional

from fastapi import FastAPI


def find_api(app: FastAPI) -> Optional[Any]:
    """The ``Api`` whose routes ``app`` serves, or None where the WebUI serves no API on it."""
    from modules.api.api import Api  # imported when the app has started: the module pulls in the whole UI

    for route in app.routes:
        owner = getattr(getattr(route, "endpoint", None), "__self__", None)
        if isinstance(owner, Api):
            return owner
    return None
