"""Live tests: against a real WebUI the user started, at ``WEBUI_URL`` (see README.md here).

Every test here is marked ``live``; without ``WEBUI_URL`` they are all skipped before any fixture runs, so CI
(no WebUI) collects and skips them in no time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from live_webui import Webui, auth_from_env

SKIP_REASON = ("WEBUI_URL is not set: live tests need a running WebUI with this extension "
               "(e.g. WEBUI_URL=http://127.0.0.1:7861; see tests/live/README.md)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "live: needs a running WebUI at WEBUI_URL (skipped without it)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("WEBUI_URL"):
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker("live") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def webui() -> Iterator[Webui]:
    """The WebUI at WEBUI_URL, its engine backend set for builds here (``WEBUI_TRT_BACKEND``, default
    tensorrt_rtx; ``WEBUI_TRT_CC``, default 8.9: a compute capability to build for, "" = this GPU); the
    options it had are put back at the end."""
    client = Webui(os.environ["WEBUI_URL"], auth_from_env())
    wanted = {"trt_backend": os.environ.get("WEBUI_TRT_BACKEND", "tensorrt_rtx"),
              "trt_compute_capability": os.environ.get("WEBUI_TRT_CC", "8.9")}
    before = client.options()
    client.set_options(wanted)
    try:
        yield client
    finally:
        client.set_options({k: before[k] for k in wanted if k in before})
        client.close()
