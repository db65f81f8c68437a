"""Mirrors modules/script_loading.py of WebUI v1.10.1: ``load_module`` runs a file as a module named after its
file name and keeps it in ``loaded_scripts`` by path (lines 7-16)."""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

loaded_scripts: dict[str, ModuleType] = {}


def load_module(path: str) -> ModuleType:
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    loaded_scripts[path] = module
    return module
