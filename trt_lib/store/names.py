"""Safe file names for engines and exports: nothing a user or a manifest names may leave the engine folder."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..errors import UnsafeNameError

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM = 64
_MODEL_SUFFIX = re.compile(r"\.(safetensors|ckpt|pt|pth|bin)$", re.IGNORECASE)


def file_stem(name: str) -> str:
    """A file-name stem for a checkpoint or LoRA name (subfolders, spaces, dots and all).

    Different names never share a stem: a short hash of the full name is appended whenever the name had
    to be changed or cut, so ``a/b`` and ``a_b`` stay apart.
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafeNameError(f"cannot make a file name from {name!r}")
    bare = _MODEL_SUFFIX.sub("", name)
    stem = _UNSAFE.sub("_", bare).strip("._-")
    if not stem or stem != bare or len(stem) > MAX_STEM:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        stem = f"{stem[:MAX_STEM - 9] or 'unnamed'}_{digest}"
    return stem


def check_id(engine_id: str) -> str:
    """Accept an engine id only in the form the store makes them (no separators, no leading dot)."""
    if not isinstance(engine_id, str) or not _ID.match(engine_id):
        raise UnsafeNameError(f"{engine_id!r} is not a valid engine id (letters, digits, '.', '_', '-'; "
                              "up to 128, no leading '.')")
    return engine_id


def inside(folder: Path, relative: str) -> Path:
    """``folder / relative``, refusing anything that would resolve outside ``folder``."""
    if not isinstance(relative, str) or not relative or "\x00" in relative or Path(relative).is_absolute():
        raise UnsafeNameError(f"{relative!r} is not a path inside the engine folder")
    root = folder.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise UnsafeNameError(f"{relative!r} points outside the engine folder")
    return target
