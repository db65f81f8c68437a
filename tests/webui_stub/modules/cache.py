"""Mirrors modules/cache.py (v1.10.1): ``cache(subsection)`` (lines 56-78) gives one store per subsection,
``dump_cache`` (lines 17-20) does nothing. The real stores are ``diskcache.Cache`` folders under the data
folder; here they are dictionaries, fresh for every stand-in WebUI (each test)."""

from __future__ import annotations

from typing import Any

caches: dict[str, dict[str, Any]] = {}


def dump_cache() -> None:
    """old function for dumping cache to disk; does nothing since diskcache (as in the WebUI)."""


def cache(subsection: str) -> dict[str, Any]:
    return caches.setdefault(subsection, {})
