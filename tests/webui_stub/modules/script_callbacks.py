"""Mirrors modules/script_callbacks.py for the callbacks the extension uses: registration with ``on_*``,
firing with ``*_callback`` (each callback's exception is reported and the others still run), and
``clear_callbacks`` when scripts are (re)loaded. Tests fire callbacks exactly as the WebUI does, through
the ``*_callback`` functions."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modules import errors


@dataclass
class ScriptCallback:
    script: str
    callback: Callable
    name: str = "unnamed"


callback_map: dict[str, list[ScriptCallback]] = {
    name: [] for name in ("callbacks_app_started", "callbacks_model_loaded", "callbacks_ui_tabs",
                          "callbacks_ui_settings", "callbacks_before_ui", "callbacks_script_unloaded",
                          "callbacks_list_unets", "callbacks_infotext_pasted")
}


def report_exception(c: ScriptCallback, job: str) -> None:
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


def add_callback(callbacks: list[ScriptCallback], fun: Callable, *, name: str | None = None,
                 category: str = "unknown") -> None:
    """Records which file registered the callback (the WebUI reads ``inspect.stack()``; walking frames is the
    same answer without reading every caller's source)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    filename = frame.f_code.co_filename if frame is not None else "unknown file"
    callbacks.append(ScriptCallback(filename, fun, f"{os.path.basename(filename)}/{category}/{name or ''}"))


def clear_callbacks() -> None:
    for callback_list in callback_map.values():
        callback_list.clear()


def _fire(category: str, *args: Any) -> list[Any]:
    results = []
    for c in list(callback_map["callbacks_" + category]):
        try:
            results.append(c.callback(*args))
        except Exception:
            report_exception(c, f"{category}_callback")
    return results


def app_started_callback(demo: Any, app: Any) -> None:
    _fire("app_started", demo, app)


def model_loaded_callback(sd_model: Any) -> None:
    _fire("model_loaded", sd_model)


def ui_tabs_callback() -> list:
    res = []
    for tabs in _fire("ui_tabs"):
        res += tabs or []
    return res


def ui_settings_callback() -> None:
    _fire("ui_settings")


def before_ui_callback() -> None:
    _fire("before_ui")


def script_unloaded_callback() -> None:
    _fire("script_unloaded")


def list_unets_callback() -> list:
    res: list = []
    _fire("list_unets", res)
    return res


def on_app_started(callback: Callable, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_app_started"], callback, name=name, category="app_started")


def on_model_loaded(callback: Callable, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_model_loaded"], callback, name=name, category="model_loaded")


def on_ui_tabs(callback: Callable, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_ui_tabs"], callback, name=name, category="ui_tabs")


def on_ui_settings(callback: Callable, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_ui_settings"], callback, name=name, category="ui_settings")


def on_before_ui(callback: Callable, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_before_ui"], callback, name=name, category="before_ui")


def on_script_unloaded(callback: Callable, *, name: str | None = None) -> None:
    add_callback(callback_map["callbacks_script_unloaded"], callback, name=name, category="script_unloaded")


def on_list_unets(callback: Callable, *, name: str | None = None) -> None:
    """``callback(unet_list)`` appends :class:`modules.sd_unet.SdUnetOption` objects to the list."""
    add_callback(callback_map["callbacks_list_unets"], callback, name=name, category="list_unets")
