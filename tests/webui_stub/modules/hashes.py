"""Mirrors modules/hashes.py (v1.10.1) for checkpoints: ``calculate_sha256`` (lines 11-19) reads the whole
file, ``sha256_from_cache`` (lines 22-38) answers only while the file's mtime is not newer than the cached
one, ``sha256`` (lines 41-66) computes and caches, or gives None under ``--no-hashing``. ``calls`` counts the
full-file hashes, so that tests can see what a lookup costs."""

from __future__ import annotations

import hashlib
import os

import modules.cache
from modules import shared

dump_cache = modules.cache.dump_cache
cache = modules.cache.cache
calls: list[str] = []


def calculate_sha256(filename: str) -> str:
    calls.append(filename)
    hash_sha256 = hashlib.sha256()
    with open(filename, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            hash_sha256.update(chunk)
    return hash_sha256.hexdigest()


def sha256_from_cache(filename: str, title: str) -> str | None:
    hashes = cache("hashes")
    try:
        ondisk_mtime = os.path.getmtime(filename)
    except FileNotFoundError:
        return None
    if title not in hashes:
        return None
    cached_sha256 = hashes[title].get("sha256", None)
    cached_mtime = hashes[title].get("mtime", 0)
    if ondisk_mtime > cached_mtime or cached_sha256 is None:
        return None
    return cached_sha256


def sha256(filename: str, title: str) -> str | None:
    hashes = cache("hashes")
    sha256_value = sha256_from_cache(filename, title)
    if sha256_value is not None:
        return sha256_value
    if shared.cmd_opts.no_hashing:
        return None
    print(f"Calculating sha256 for {filename}: ", end="")
    sha256_value = calculate_sha256(filename)
    print(f"{sha256_value}")
    hashes[title] = {"mtime": os.path.getmtime(filename), "sha256": sha256_value}
    dump_cache()
    return sha256_value
