"""Issue 11, defect 1: an engine built on a checkpoint whose file was then replaced by other weights of the same
name is never used for the new weights: not offered, not picked by "Automatic", listed as unusable.

Works on a copy of the loaded checkpoint (``livetest_hash_…`` beside it), so the user's files are untouched;
the copy, its engine and the loaded checkpoint are put back afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_checkpoints import checkpoint_copy, replace_weights
from live_webui import STATIC_64, Webui, message

pytestmark = pytest.mark.live


@pytest.fixture
def copied(webui: Webui) -> Iterator[tuple[str, Path]]:
    with checkpoint_copy(webui, "hash") as found:
        yield found


def test_an_engine_of_a_replaced_checkpoint_is_never_used(webui: Webui, copied: tuple[str, Path]) -> None:
    name, path = copied
    entry = webui.build(STATIC_64)
    try:
        assert entry["checkpoint"] == name
        label = webui.engine_label(name)
        replace_weights(path)
        others = [m["model_name"] for m in webui.checkpoints() if m["model_name"] != name]
        webui.load_checkpoint(others[0])  # the WebUI does not reload the file it has loaded: load another first
        webui.load_checkpoint(name)
        new_hash = webui.loaded_checkpoint().get("sha256")
        assert new_hash and new_hash != entry["checkpoint_hash"], "precondition: the WebUI hashed the new weights"

        problems = []
        listed = webui.engine(entry["id"])
        if listed["usable"]:
            problems.append(f"GET /engines lists it as usable (problem: {listed.get('problem')!r})")
        # the entry may stay in the dropdown, but only so that a job naming it gets the reason (an unlisted label
        # would silently run the PyTorch UNet): then naming it must be refused with the mismatch message
        kept_for_the_reason = label in webui.unet_choices()
        auto = webui.txt2img("a cat", sd_unet="Automatic")
        if auto.status_code != 200:
            problems.append(f"a job on Automatic (must run the PyTorch UNet) answered HTTP {auto.status_code}: "
                            f"{message(auto)[:200]}")
        named = webui.txt2img("a cat", sd_unet=label)
        refused = 400 <= named.status_code < 500 and re.search(r"another version|sha256|replaced", message(named))
        if not refused and (kept_for_the_reason or named.status_code != 200):
            problems.append(f"a job naming {label} answered HTTP {named.status_code} without the mismatch message: "
                            f"{message(named)[:200]}")
        assert not problems, "the engine of the replaced checkpoint is still used: " + "; ".join(problems)
    finally:
        webui.delete_engine(entry["id"])
