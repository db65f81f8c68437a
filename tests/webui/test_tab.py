"""The TensorRT tab's handlers as Gradio 3.41 calls them: bad values from its components, and build progress
through Gradio's own progress detection and queue."""

from __future__ import annotations

import asyncio
from typing import Any

import gradio as gr
import pytest
from gradio.helpers import special_args

from trt_lib.model.families import get_family

SD1_PRESET = get_family("sd1").preset("static-512").label
FIELDS = [1, 1, 1, 512, 512, 512, 512, 512, 512, 75, 75, 75]


@pytest.fixture
def tab(webui):
    webui.add_checkpoint("sd15.safetensors", "sd1")
    webui.load("sd15.safetensors")
    return webui.module("trt_webui.tab")


def tab_blocks(webui) -> gr.Blocks:
    ((blocks, title, _),) = webui.script_callbacks.ui_tabs_callback()
    assert title == "TensorRT"
    return blocks


def fn_index(blocks: gr.Blocks, fn: Any) -> int:
    (index,) = [i for i, block_fn in enumerate(blocks.fns) if block_fn.fn is fn]
    return index


BAD_CUSTOM = [[None] * 12, [""] * 12, ["four"] * 12, [1.5] + FIELDS[1:], [float("nan")] * 12, FIELDS[:3]]


@pytest.mark.catalogue("tab")
@pytest.mark.parametrize("preset", [None, "", "512x512 typed by hand", 3, ["a list"]])
def test_a_preset_not_among_the_choices_gets_a_message(tab, webui, preset):
    """Issue 11, defect 3: such values raised StopIteration (a bare red "Error" in the browser)."""
    assert tab.validate(preset, *FIELDS).startswith("⚠ ")
    answer, job_id, _ = tab.build(None, preset, "", False, False, *FIELDS)
    assert answer.startswith("⚠ ") and "pick one from the list" in answer and job_id == ""
    assert webui.EXT.jobs.jobs() == []


@pytest.mark.catalogue("tab")
@pytest.mark.parametrize("fields", BAD_CUSTOM, ids=["none", "empty", "text", "fraction", "nan", "too-few"])
def test_bad_custom_fields_get_a_message(tab, webui, fields):
    message = tab.validate(tab.CUSTOM, *fields)
    assert message.startswith("⚠ ") and ("enter a number" in message or "whole number" in message)
    assert tab.build(None, tab.CUSTOM, "", False, False, *fields)[0] == message
    assert webui.EXT.jobs.jobs() == []


@pytest.mark.catalogue("tab")
def test_a_preset_of_the_previous_family_after_a_checkpoint_switch(tab, webui):
    sdxl = get_family("sdxl")
    assert SD1_PRESET not in {p.label for p in sdxl.presets}
    assert tab.validate(SD1_PRESET, *FIELDS).startswith("✓ ")
    webui.add_checkpoint("sdxl.safetensors", "sdxl")
    webui.load("sdxl.safetensors")
    message = tab.validate(SD1_PRESET, *FIELDS)
    assert message == f"⚠ {SD1_PRESET!r} is not a preset of {sdxl.label}: pick one from the list (press " \
                      f"Refresh after a checkpoint change), or {tab.CUSTOM!r} for your own ranges"
    assert tab.refreshed_presets(SD1_PRESET)["value"] == sdxl.default_preset.label


@pytest.mark.catalogue("tab")
@pytest.mark.parametrize("bad", [None, "", "many", float("nan")])
def test_the_other_handlers_answer_bad_values_with_a_message(tab, bad):
    assert tab.fit(bad, 512, 1, False, 2.0, 75, 75).startswith("⚠ width: enter a")
    assert tab.fit(512, 512, 1, True, bad, 75, 75) == "⚠ upscale by: enter a number"
    assert tab.fit(512, 512, 1, bad, 2.0, bad, 75).startswith("⚠ prompt tokens: enter a")
    message, _, _ = tab.delete(bad)
    assert message == ("⚠ many is no longer in the engine list" if bad == "many" else
                       "⚠ pick an engine first: in the list below the table, or click its row")
    assert tab.cancel(bad) == "No build is running."
    assert tab.add_lora(bad, bad) == (str(bad or ""), None)
    assert tab.add_lora("sd1_a:heavy", "sd1_b") == ("sd1_a:heavy", None)  # kept as typed; the build says why
    assert tab.refreshed_presets(bad)["value"] == tab.preset_choices()[0]


def test_gradio_finds_the_progress_parameter_of_the_build_handler(tab, webui):
    """Issue 11, defect 2: ``build(…, *values, progress=gr.Progress())`` was never given a progress tracker."""
    blocks = tab_blocks(webui)
    index = fn_index(blocks, tab.build)
    assert blocks.fns[index].tracks_progress
    inputs, progress_index, _ = special_args(tab.build, ["preset", "", False, *FIELDS])
    assert progress_index == 0 and isinstance(inputs[0], gr.Progress) and inputs[1:] == ["preset", "", False, *FIELDS]


def test_without_the_gradio_queue_the_tab_still_launches(tab, webui):
    """Gradio refuses to launch a page holding a progress-tracking handler when the queue is off."""
    webui.shared.cmd_opts.no_gradio_queue = True
    try:
        blocks = tab_blocks(webui)
    finally:
        webui.shared.cmd_opts.no_gradio_queue = False
    assert not any(f.tracks_progress for f in blocks.fns)
    blocks.validate_queue_settings()  # what Blocks.launch runs; raises with a progress-tracking handler
    fn_index(blocks, tab.build_without_progress)


class RecordingQueue:
    """Stands in for Gradio's queue where ``gr.Progress`` reports (``Queue.set_progress``)."""

    def __init__(self, on_progress=None) -> None:
        self.seen: list[tuple[str, float]] = []
        self.on_progress = on_progress

    def set_progress(self, event_id: str, iterables: list) -> None:
        (unit,) = iterables
        self.seen.append((unit.desc, unit.progress))
        if self.on_progress:
            self.on_progress(unit.desc)


def click_build(webui, blocks: gr.Blocks, tab, queue: RecordingQueue, preset: str) -> list:
    """Press the build button as Gradio's queue does: ``Blocks.process_api`` with an event id."""
    blocks._queue = queue
    result = asyncio.run(blocks.process_api(fn_index(blocks, tab.build), [preset, "", False, False, *FIELDS], state={},
                                            event_id="press"))
    return result["data"]


@pytest.mark.catalogue("tab")
def test_a_real_build_shows_its_stages_and_fraction_in_gradio(tab, webui):
    pytest.importorskip("tensorrt_rtx")
    webui.shared.opts.set("trt_backend", "tensorrt_rtx")
    webui.shared.opts.set("trt_compute_capability", "8.9")
    queue = RecordingQueue()
    answer, job_id, _ = click_build(webui, tab_blocks(webui), tab, queue, SD1_PRESET)
    assert answer.startswith("✓ Engine built: "), answer
    stages = [desc for desc, _ in queue.seen]
    fractions = [f for _, f in queue.seen]
    assert any(s.startswith("export: ") for s in stages) and any(s.startswith("building: ") for s in stages), stages
    assert fractions == sorted(fractions) and 0 <= fractions[0] < 0.3 < fractions[-1] <= 1, fractions


@pytest.mark.catalogue("interruptions")
def test_cancel_from_the_tab_says_cancelling_then_cancelled(tab, webui):
    pytest.importorskip("tensorrt_rtx")
    webui.shared.opts.set("trt_backend", "tensorrt_rtx")
    webui.shared.opts.set("trt_compute_capability", "8.9")
    said: list[str] = []

    def press_cancel_once_building(desc: str) -> None:
        if desc.startswith("building: ") and not said:
            said.append(tab.cancel(""))

    queue = RecordingQueue(press_cancel_once_building)
    answer, _, _ = click_build(webui, tab_blocks(webui), tab, queue, SD1_PRESET)
    assert said == ["Cancelling… (within a few seconds; nothing half-written is kept)"]
    assert answer == "Cancelled: build cancelled; nothing was written"
    assert webui.EXT.store.entries() == []
    folder = webui.EXT.store.folder
    assert not [p for p in folder.rglob("*") if p.suffix == ".engine" or ".partial" in p.name]


def test_a_finished_build_refreshes_the_engine_picker(tab, webui):
    """Seen in the real WebUI: after a build the table showed the new engine but the picker under it did not
    offer it until Refresh. The build's event chain updates the picker from the new engine list."""
    blocks = tab_blocks(webui)
    build = blocks.dependencies[fn_index(blocks, tab.build)]
    picker = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "trt_engine_pick")
    then = [d for d in blocks.dependencies if d.get("trigger_after") == fn_index(blocks, tab.build)]
    assert build["trigger"] == "click" and len(then) == 1
    assert blocks.fns[blocks.dependencies.index(then[0])].fn is tab.engine_picker
    assert then[0]["inputs"] == then[0]["outputs"] == [picker._id]
