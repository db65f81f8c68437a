"""Issue 11: a job the selected engine does not cover stops before its first step with a 4xx answer that
names what is missing, and a negative prompt over the engine's tokens is named as the negative prompt."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from live_webui import STATIC_64, Webui, built, message

pytestmark = pytest.mark.live

LONG = " ".join(["a red cat on a blue chair"] * 20)
"""Well over 75 tokens."""


@pytest.fixture(scope="module")
def engine_label(webui: Webui) -> Iterator[str]:
    """The dropdown label of a fresh 64 px, 75-token engine of the loaded checkpoint."""
    with built(webui, STATIC_64) as entry:
        yield webui.engine_label(entry["checkpoint"])


def _rejected(webui: Webui, label: str, prompt: str, **fields: Any) -> str:
    r = webui.txt2img(prompt, sd_unet=label, **fields)
    text = message(r)
    assert 400 <= r.status_code < 500, f"expected a 4xx rejection, got HTTP {r.status_code}: {text[:300]}"
    return text


def test_a_size_the_engine_does_not_cover_is_refused_naming_the_size(webui: Webui, engine_label: str) -> None:
    text = _rejected(webui, engine_label, "a cat", width=128)
    assert "128" in text and "width" in text.lower(), f"the message does not name the width 128: {text}"


def test_a_batch_the_engine_does_not_cover_is_refused_naming_the_batch(webui: Webui, engine_label: str) -> None:
    text = _rejected(webui, engine_label, "a cat", batch_size=3)
    assert "batch" in text.lower() and "3" in text, f"the message does not name batch 3: {text}"


def test_a_long_prompt_is_refused_naming_the_prompt(webui: Webui, engine_label: str) -> None:
    text = _rejected(webui, engine_label, LONG)
    assert "prompt" in text.lower() and "tokens" in text.lower(), f"the message does not name the prompt: {text}"


def test_a_long_negative_prompt_is_refused_naming_the_negative_prompt(webui: Webui, engine_label: str) -> None:
    text = _rejected(webui, engine_label, "a cat", negative_prompt=LONG)
    assert "negative prompt" in text.lower(), f"the message does not name the negative prompt: {text}"
