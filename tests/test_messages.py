"""The wording of the messages a user sees when no engine covers a job, or an engine cannot run here.

They speak in the user's terms (batch size in images, the prompt or the negative prompt, the hires pass),
name every unit once, and are one paragraph of whole sentences: the WebUI shows an exception's text
``html.escape``d in a ``<div class='error'>`` whose line breaks collapse (modules/call_queue.py).
"""

from __future__ import annotations

import re

import pytest

from trt_lib.backends import get_backend
from trt_lib.engines.matching import need, plan
from trt_lib.errors import EngineRunError, NoProfileError
from trt_lib.model.families import get_family
from trt_lib.model.job_shapes import JobSpec, Pass, call_sources, unet_calls
from trt_lib.model.profiles import Profile, UnetCall
from trt_lib.store.engine_store import EngineEntry

SD1 = get_family("sd1")
STATIC = Profile.static(1, 512, 512)
DYNAMIC = Profile.from_dict({"batch": [1, 1, 2], "height": [512, 512, 768], "width": [512, 512, 768],
                             "tokens": [75, 75, 150]})


def engine(profile: Profile) -> EngineEntry:
    return EngineEntry("e1", "model", "abc", "sd1", [profile.to_dict()], "tensorrt_rtx", "1.7", ["8.9"],
                       "e1.engine", 1, created="2026-01-01T00:00:00")


def rejection(profile: Profile, spec: JobSpec) -> str:
    with pytest.raises(NoProfileError) as caught:
        plan([engine(profile)], unet_calls(spec), SD1, "model", call_sources(spec))
    return str(caught.value)


@pytest.mark.catalogue("messages")
@pytest.mark.parametrize("profile, spec, present, absent", [
    (STATIC, JobSpec(1, (Pass(512, 768, 75, 75),)),
     ["Needed: 512x768 px, batch size 1, prompt and negative prompt of 75 tokens;",
      "height 768 px is 256 px over the engine's maximum of 512 px"], ["width", "pass"]),
    (STATIC, JobSpec(1, (Pass(512, 512, 75, 150),)),
     ["Needed: 512x512 px, batch size 1, negative prompt of 150 tokens;",
      "the negative prompt needs 150 tokens, 75 over the engine's maximum of 75."], ["the prompt needs"]),
    (STATIC, JobSpec(1, (Pass(512, 512, 300, 75),)),
     ["the prompt needs 300 tokens, 225 over the engine's maximum of 75"], ["negative prompt needs"]),
    (DYNAMIC, JobSpec(4, (Pass(512, 512, 75, 75),)),
     ["batch size 4 is 2 over the engine's maximum of 2"], ["rows"]),
    (DYNAMIC, JobSpec(1, (Pass(512, 512, 75, 75), Pass(1024, 1024, 75, 75, hires=True))),
     ["Needed: hires pass 1024x1024 px, batch size 1", "height 1024 px is 256 px over the engine's maximum of 768 px",
      "(hires-512-1024)"], ["first pass"]),
    (DYNAMIC, JobSpec(2, (Pass(512, 512, 75, 75),), cond_repeats=2),
     ["batch size 2 sends the prompt and negative prompt (2 AND-joined parts) as 6 rows, but the engine "
      "(batch size 1-2) takes 1-4 rows: two per image"], []),
    (Profile.from_dict({"batch": [2, 2, 4], "height": 512, "width": 512, "tokens": [75, 75, 150]}),
     JobSpec(1, (Pass(512, 512, 150, 75),)),
     ["batch size 1 is 1 under the engine's minimum of 2"], ["rows"]),
], ids=["size", "negative-prompt-tokens", "prompt-tokens", "batch", "hires", "AND-rows", "batch-under"])
def test_an_uncovered_job_is_explained_in_the_users_terms(profile, spec, present, absent):
    text = rejection(profile, spec)
    for fragment in present:
        assert fragment in text, text
    for fragment in absent:
        assert fragment not in text, text
    assert_reads_well(text)


def assert_reads_well(text: str) -> None:
    assert "\n" not in text, "line breaks vanish in the WebUI's error box"
    assert not re.search(r"\b(rows|tokens|px) \d+ \1\b", text), "a unit named twice"
    assert "UNet rows" not in text and "context rows" not in text


@pytest.mark.catalogue("messages")
def test_a_call_met_without_its_job_says_rows_with_what_they_are():
    """A call an inner job makes (ADetailer) reaches the engine without a job check: only its shape is known."""
    text = need([engine(STATIC)], UnetCall(2, 24, 24, 77))
    assert text.startswith("Needed: 192x192 px, 2 rows at once (a row per image for the prompt and another for "
                           "the negative prompt)")
    assert "height 192 px is 320 px under the engine's minimum of 512 px" in text
    assert_reads_well(text)


@pytest.mark.catalogue("messages")
def test_an_engine_without_a_cuda_gpu_says_how_to_go_on(tmp_path):
    from trt_lib.backends.tensorrt_runtime import TensorRTRunner

    with pytest.raises(EngineRunError) as caught:  # no CUDA GPU on the test machines
        TensorRTRunner(get_backend("tensorrt_rtx"), tmp_path / "e1.engine", SD1.input_names, "out", [],
                       onnx_path=None, cache_dir=tmp_path)
    text = str(caught.value)
    assert "PyTorch sees none here" in text and "Choose None for SD Unet" in text
    assert "\"When no engine covers a generation\" to fallback" in text
    assert_reads_well(text)
