"""Mirrors modules/extensions.py of WebUI v1.10.1: ``Extension`` (name, path, enabled; lines 105-116) and
``active()`` (21-27; the stand-in has no "disable extensions" options)."""

from __future__ import annotations


class Extension:
    def __init__(self, name: str, path: str, enabled: bool = True, is_builtin: bool = False) -> None:
        self.name = name
        self.path = path
        self.enabled = enabled
        self.is_builtin = is_builtin


extensions: list[Extension] = []


def active() -> list[Extension]:
    return [x for x in extensions if x.enabled]
