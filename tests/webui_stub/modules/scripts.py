"""Mirrors modules/scripts.py: ``Script`` and ``AlwaysVisible``, loading an extension's ``scripts/*.py`` with
its folder first on ``sys.path`` only while the file runs, and a ``ScriptRunner`` that calls always-on
scripts' hooks in load order, reporting and swallowing each hook's exception as the WebUI does."""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from modules import errors, script_callbacks, script_loading

AlwaysVisible = object()


class Script:
    name: str | None = None
    filename: str | None = None
    args_from = 0
    args_to = 0
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname: str | None = None

    def title(self) -> str:
        raise NotImplementedError()

    def ui(self, is_img2img: bool) -> Any:
        pass

    def show(self, is_img2img: bool) -> Any:
        return True

    def run(self, p: Any, *args: Any) -> Any:
        pass

    def setup(self, p: Any, *args: Any) -> None:
        pass

    def before_process(self, p: Any, *args: Any) -> None:
        pass

    def process(self, p: Any, *args: Any) -> None:
        pass

    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def postprocess_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def post_sample(self, p: Any, ps: Any, *args: Any) -> None:
        pass

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        pass

    def before_hr(self, p: Any, *args: Any) -> None:
        pass


@dataclass
class ScriptClassData:
    script_class: type
    path: str
    basedir: str
    module: ModuleType


class PostSampleArgs:
    def __init__(self, samples: Any) -> None:
        self.samples = samples


scripts_data: list[ScriptClassData] = []


def load_module(path: str) -> ModuleType:
    """modules/scripts.py:515 loads each script with ``script_loading.load_module``."""
    return script_loading.load_module(path)


def load_scripts(extension_dirs: list[str]) -> None:
    """Load ``scripts/*.py`` of each extension folder (the stand-in is given the folders to load)."""
    global scripts_txt2img, scripts_img2img
    scripts_data.clear()
    script_callbacks.clear_callbacks()
    syspath = sys.path
    for basedir in extension_dirs:
        folder = os.path.join(basedir, "scripts")
        for filename in sorted(os.listdir(folder)):
            if not filename.endswith(".py"):
                continue
            path = os.path.join(folder, filename)
            try:
                sys.path = [basedir] + sys.path
                module = load_module(path)
                for script_class in module.__dict__.values():
                    if inspect.isclass(script_class) and issubclass(script_class, Script) \
                            and script_class is not Script:
                        scripts_data.append(ScriptClassData(script_class, path, basedir, module))
            except Exception:
                errors.report(f"Error loading script: {filename}", exc_info=True)
            finally:
                sys.path = syspath
    scripts_txt2img = ScriptRunner()
    scripts_img2img = ScriptRunner()


class ScriptRunner:
    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.alwayson_scripts: list[Script] = []
        self.selectable_scripts: list[Script] = []

    def initialize_scripts(self, is_img2img: bool) -> None:
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for script_data in scripts_data:
            try:
                script = script_data.script_class()
            except Exception:
                errors.report(f"Error # failed to initialize Script {script_data.module}: ", exc_info=True)
                continue
            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def ordered_scripts(self, method_name: str) -> list[Script]:
        """Always-on scripts that override ``method_name``, in load order (no user sort configured)."""
        return [s for s in self.alwayson_scripts
                if getattr(s.__class__, method_name, None) != getattr(Script, method_name, None)]

    def _call(self, method_name: str, p: Any, *args: Any, **kwargs: Any) -> None:
        for script in self.ordered_scripts(method_name):
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                if method_name in ("postprocess", "post_sample"):
                    getattr(script, method_name)(p, *args, *script_args)
                else:
                    getattr(script, method_name)(p, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method_name}: {script.filename}", exc_info=True)

    def before_process(self, p: Any) -> None:
        self._call("before_process", p)

    def process(self, p: Any) -> None:
        self._call("process", p)

    def before_process_batch(self, p: Any, **kwargs: Any) -> None:
        self._call("before_process_batch", p, **kwargs)

    def process_batch(self, p: Any, **kwargs: Any) -> None:
        self._call("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p: Any, **kwargs: Any) -> None:
        self._call("process_before_every_sampling", p, **kwargs)

    def before_hr(self, p: Any) -> None:
        self._call("before_hr", p)

    def post_sample(self, p: Any, ps: PostSampleArgs) -> None:
        self._call("post_sample", p, ps)

    def postprocess(self, p: Any, processed: Any) -> None:
        self._call("postprocess", p, processed)


scripts_txt2img = ScriptRunner()
scripts_img2img = ScriptRunner()
