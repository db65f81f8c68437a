"""A job with a hypernetwork (``<hypernet:…>``) on an engine: the WebUI applies hypernetworks inside its
attention, which never runs while an engine is active, so such a job is stopped before its first step naming
the hypernetwork (or runs on PyTorch with the fallback setting), and a later job without one runs on the
engine. The hypernetwork is made by the WebUI's own ``/sdapi/v1/create/hypernetwork`` and removed afterwards.

On the kit (torch 2.13 with WebUI v1.10.1) start the WebUI with ``--disable-safe-unpickle``: the WebUI's own
check refuses the files this torch writes ("bad file inside …/.format_version"), the hypernetwork then never
loads, and the job rightly runs on the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from live_webui import PREFIX, STATIC_64, Webui, built, message

pytestmark = pytest.mark.live


@pytest.fixture
def hypernetwork(webui: Webui) -> Iterator[str]:
    name = f"{PREFIX}_hn"
    info = webui.post("/sdapi/v1/create/hypernetwork", {
        "name": name, "enable_sizes": [768], "overwrite_old": True, "layer_structure": "1, 2, 1",
        "activation_func": "linear", "weight_init": "Normal"})["info"]
    assert "filename" in info, info
    path = Path(info.split("filename:", 1)[1].strip())
    try:
        yield name
    finally:
        path.unlink(missing_ok=True)


def test_a_hypernetwork_job_on_an_engine_is_stopped_naming_it(webui: Webui, hypernetwork: str) -> None:
    with built(webui, STATIC_64):
        label = webui.engine_label(webui.loaded_checkpoint()["model_name"])
        r = webui.txt2img(f"a photo of a cat <hypernet:{hypernetwork}:1>", sd_unet=label)
        assert r.status_code == 409 and f"hypernetwork {hypernetwork}" in message(r), \
            f"HTTP {r.status_code}: {message(r)[:300]} (did the WebUI load the hypernetwork? see the module docstring)"
        try:
            webui.set_options({"trt_on_uncovered": "fallback"})
            r = webui.txt2img(f"a photo of a cat <hypernet:{hypernetwork}:1>", sd_unet=label)
            assert r.status_code == 200 and "PyTorch UNet used" in r.json()["info"], message(r)
        finally:
            webui.set_options({"trt_on_uncovered": "raise"})
        r = webui.txt2img("a photo of a cat", sd_unet=label)  # none now: the engine takes the job
        assert r.status_code == 200 and "PyTorch UNet used" not in r.json()["info"], message(r)
