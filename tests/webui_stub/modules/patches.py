"""Mirrors modules/patches.py: ``patch`` replaces a function of a module or class and keeps the original per
caller key, ``undo`` puts it back, ``original`` returns it (the built-in Lora extension's ``lora_patches``
uses these for the torch layer classes' ``forward`` and ``_load_from_state_dict``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any


def patch(key: str, obj: Any, field: str, replacement: Callable) -> Callable:
    patch_key = (obj, field)
    if patch_key in originals[key]:
        raise RuntimeError(f"patch for {field} is already applied")
    original_func = getattr(obj, field)
    originals[key][patch_key] = original_func
    setattr(obj, field, replacement)
    return original_func


def undo(key: str, obj: Any, field: str) -> None:
    patch_key = (obj, field)
    if patch_key not in originals[key]:
        raise RuntimeError(f"there is no patch for {field} to undo")
    setattr(obj, field, originals[key].pop(patch_key))


def original(key: str, obj: Any, field: str) -> Callable | None:
    return originals[key].get((obj, field), None)


originals: defaultdict[str, dict[tuple[Any, str], Callable]] = defaultdict(dict)
