"""The tab's engine table and its actions, called as Gradio 3.41 calls the handlers (they are plain
functions; the row click goes through Gradio's own detection of the ``gr.SelectData`` parameter)."""

from __future__ import annotations

import re

import gradio as gr
import pytest
from gradio.helpers import special_args

SMALL = {"batch": [1, 1, 4], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 150]}


@pytest.fixture
def tab(webui):
    return webui.module("trt_webui.tab")


def test_an_empty_engine_table_still_names_its_columns(webui, tab):
    shown = gr.Dataframe(headers=tab.ENGINE_COLUMNS).postprocess(tab.engine_rows())
    assert shown == {"headers": tab.ENGINE_COLUMNS, "data": []}
    assert tab.engine_picker()["choices"] == []


def test_engines_are_picked_from_the_table_and_deleted(webui, tab):
    webui.with_engine("a.safetensors", "sd1", SMALL)
    (entry,) = webui.EXT.store.entries()
    table = tab.engine_rows()
    created = table.loc[0, "created"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", created) and created[:10] in entry.created
    inputs, _, _ = special_args(tab.pick_row, [table], event_data=gr.SelectData(None, {"index": [0, 3], "value": ""}))
    picked = tab.pick_row(*inputs)["value"]
    assert picked.startswith(f"{entry.id} — a, ") and picked in tab.engine_picker(picked)["choices"]
    assert tab.delete(None)[0].startswith("⚠ pick an engine first")
    message, table, picker = tab.delete(picked)
    assert message == f"Deleted {entry.id}." and table.empty and picker["choices"] == []
    assert not (webui.EXT.store.folder / entry.engine_file).exists()
    assert tab.delete(picked)[0] == f"⚠ {entry.id} is no longer in the engine list"


@pytest.mark.catalogue("files")
def test_engine_files_the_manifest_lost_show_in_the_table_and_are_adopted_or_deleted(webui, tab):
    webui.with_engine("a.safetensors", "sd1", SMALL)
    (entry,) = webui.EXT.store.entries()
    store = webui.EXT.store
    store.manifest_path.rename(store.folder / "manifest.old")
    (store.folder / "by-hand.engine").write_bytes(b"engine")
    table = tab.engine_rows()
    assert list(table["id"]) == [entry.engine_file, "by-hand.engine"] and "adopt it" in table.loc[0, "status"]
    lost, by_hand = tab.engine_picker()["choices"]
    assert tab.rebuild(by_hand)[0].startswith("⚠ by-hand.engine has no record")
    assert tab.adopt(by_hand)[0].startswith("⚠ by-hand.engine has no record by-hand.engine.json")
    message, table, picker = tab.adopt(lost)
    assert message == f"Adopted {entry.engine_file} as engine {entry.id}." and list(table["id"]) == [entry.id,
                                                                                                     "by-hand.engine"]
    assert webui.shared_items.sd_unet_items() == ["Automatic", "[TRT] a", "None"]
    assert tab.delete(picker["choices"][1])[0] == "Deleted by-hand.engine."
    assert not (store.folder / "by-hand.engine").exists()


def test_a_replaced_checkpoints_engine_is_rebuilt_from_the_tab(webui, tab, monkeypatch):
    webui.with_engine("a.safetensors", "sd1", SMALL)
    webui.add_checkpoint("a.safetensors", "sd1", seed=1)
    webui.add_checkpoint("b.safetensors", "sd1")
    webui.load("b.safetensors")
    webui.load("a.safetensors")
    (entry,) = webui.EXT.store.entries()
    assert "another version of a" in tab.engine_rows().loc[0, "status"]
    job = type("Job", (), {"id": "j1", "description": "a: 64-128x64-128 b1-4 t75-150"})()
    monkeypatch.setattr(webui.EXT, "submit_build", lambda profiles, loras, refit, controlnet, replaces: job)
    message, job_id = tab.rebuild(tab.engine_picker()["choices"][0])
    assert job_id == "j1" and message.startswith(f"Rebuilding {entry.id} (a: 64-128x64-128")
