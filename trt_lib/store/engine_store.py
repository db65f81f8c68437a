"""The engine store: a folder of engine files and one versioned manifest describing them.

The manifest is only ever replaced whole (written to a temporary file, then renamed over the old one) and
every read-modify-write holds a lock file, so two writers (the tab and the API, or two WebUIs sharing a
folder) never lose each other's entries. An entry is added only once its engine file is complete, so a
build that dies leaves at most a temporary file, which :meth:`EngineStore.cleanup` removes and reports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from ..errors import StoreError, UnrecordedEngineError, UnsafeNameError
from ..model.families import ResidualPoint
from ..model.profiles import Profile
from .names import check_id, file_stem, inside

if TYPE_CHECKING:
    from ..engines.runtime import EngineProfile
    from ..model.families import Family

MANIFEST = "manifest.json"
FORMAT = "sd-webui-tensorrt/engines"
VERSION = 1
TEMP_MARK = ".partial"
"""Files being written carry this in their name until they are complete."""
SIDECAR = ".json"
"""Beside each engine file, its manifest entry (``<engine file>.json``): what adopting a file needs."""

HashLookup = Callable[[str], "str | None"]
"""The sha256 of a checkpoint's weights as the WebUI knows them now, by checkpoint name; None when unknown."""


_MANIFEST_FIX = ("Your engine files are untouched; repair the file, or move it away to start a new one and adopt "
                 "the engines again in the TensorRT tab (each has its record beside it). Builds are refused until "
                 "then, since their engines could not be recorded.")


@dataclass
class EngineEntry:
    """What the manifest records of one engine."""

    id: str
    checkpoint: str
    """The WebUI's checkpoint name (its ``model_name``; subfolders included), used to pick engines."""
    checkpoint_hash: str
    family: str
    profiles: list[dict[str, list[int]]]
    backend: str
    backend_version: str
    compute_capabilities: list[str]
    engine_file: str
    engine_bytes: int
    onnx_file: str = ""
    loras: list[dict[str, Any]] = field(default_factory=list)
    refittable: bool = False
    weight_stripped: bool = False
    dtype: str = "float16"
    build_seconds: float = 0.0
    created: str = ""
    check: dict[str, Any] = field(default_factory=dict)
    """The last engine check's report (:class:`~trt_lib.engines.engine_check.CheckReport` as a dict); empty:
    never checked."""
    controlnet: bool = False
    """ControlNet-ready: the engine takes ControlNet's residuals as extra inputs (zeros when no unit runs)."""
    controlnet_residuals: list[list[int]] = field(default_factory=list)
    """[channels, latent downscale] of each residual input ``control_<i>``, in input order."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineEntry:
        known = {f for f in cls.__dataclass_fields__}
        try:
            entry = cls(**{k: v for k, v in data.items() if k in known})
            check_id(entry.id)
            [Profile.from_dict(p) for p in entry.profiles]
            if not isinstance(entry.check, dict):
                raise ValueError(f"check is {type(entry.check).__name__}, not an object")
            if entry.controlnet != bool(entry.residual_points):
                raise ValueError("controlnet and controlnet_residuals disagree")
        except (TypeError, ValueError) as e:
            raise StoreError(f"malformed manifest entry {data.get('id', '?')!r}: {e}") from e
        return entry

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def parsed_profiles(self) -> list[Profile]:
        return [Profile.from_dict(p) for p in self.profiles]

    @property
    def residual_points(self) -> tuple[ResidualPoint, ...]:
        return tuple(ResidualPoint.parse(p) for p in self.controlnet_residuals)

    def engine_inputs(self, family: Family) -> tuple[tuple[str, ...], list[EngineProfile]]:
        """The engine's input names and its optimisation profiles, residual inputs included."""
        points = self.residual_points
        return family.engine_input_names(points), [family.engine_shapes(p, points) for p in self.parsed_profiles]

    @property
    def lora_label(self) -> str:
        return ", ".join(f"{lo['name']}:{lo['weight']:g}" for lo in self.loras)

    def build_label(self) -> str:
        """What a rebuild builds again: the profiles and baked LoRAs."""
        parts = ["; ".join(p.label() for p in self.parsed_profiles)]
        if self.loras:
            parts.append(f"LoRA {self.lora_label}")
        return ", ".join(parts) + (", refittable" if self.refittable else "")

    def label(self) -> str:
        """Human-readable one-liner for lists: profiles, LoRAs, backend."""
        parts = ["; ".join(p.label() for p in self.parsed_profiles)]
        if self.loras:
            parts.append(f"LoRA {self.lora_label}")
        if self.controlnet:
            parts.append("ControlNet")
        return f"{' | '.join(parts)} ({self.backend} {self.backend_version})"


@dataclass(frozen=True)
class Problem:
    """An entry that cannot be used, and why (shown to the user, never silently skipped)."""

    entry_id: str
    reason: str


@dataclass(frozen=True)
class Runtime:
    """What the running machine offers, to check entries against."""

    backend: str
    backend_version: str
    compute_capability: str | None
    runs_onnx: bool = False
    """The reference runtime: it runs an engine's ONNX export, so only that must be there (any backend, version
    or GPU the engine was built for will do)."""


class EngineStore:
    """A folder of engines with their manifest."""

    def __init__(self, folder: Path | str, lock_timeout: float = 30.0) -> None:
        self.folder = Path(folder)
        self.manifest_path = self.folder / MANIFEST
        self._lock = FileLock(str(self.folder / (MANIFEST + ".lock")), timeout=lock_timeout)

    # -- reading -----------------------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"format": FORMAT, "version": VERSION, "engines": []}
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"{self.manifest_path} cannot be read ({e}). {_MANIFEST_FIX}") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("engines"), list):
            raise StoreError(f"{self.manifest_path} is not an engine manifest of this extension (it needs "
                             f"\"format\": \"{FORMAT}\" and an \"engines\" list). {_MANIFEST_FIX}")
        if not isinstance(data.get("version"), int) or data["version"] > VERSION:
            raise StoreError(f"{self.manifest_path} was written by a newer version of this extension "
                             f"(format {data.get('version')!r}, this one reads {VERSION}); update the extension")
        return data

    def entries(self) -> list[EngineEntry]:
        """All well-formed entries (malformed ones are listed by :meth:`problems`)."""
        return [e for e in self._parse(self._read()) if isinstance(e, EngineEntry)]

    def _parse(self, data: dict[str, Any]) -> list[EngineEntry | Problem]:
        out: list[EngineEntry | Problem] = []
        for raw in data["engines"]:
            try:
                out.append(EngineEntry.from_dict(raw))
            except StoreError as e:
                out.append(Problem(str(raw.get("id", "?")) if isinstance(raw, dict) else "?", str(e)))
        return out

    def get(self, engine_id: str) -> EngineEntry:
        check_id(engine_id)
        for entry in self.entries():
            if entry.id == engine_id:
                return entry
        raise StoreError(f"no engine {engine_id!r} in {self.folder}")

    def engine_path(self, entry: EngineEntry) -> Path:
        return inside(self.folder, entry.engine_file)

    def onnx_path(self, entry: EngineEntry) -> Path | None:
        return inside(self.folder, entry.onnx_file) if entry.onnx_file else None

    def check_readable(self) -> None:
        """Raise the manifest's problem, with the fix, before any work whose result could not be recorded."""
        self._read()

    def review(self, runtime: Runtime | None = None, hash_of: HashLookup | None = None,
               ) -> tuple[list[EngineEntry], list[Problem]]:
        """The well-formed entries, and every entry that cannot be used here with the reason (malformed, files
        missing, another backend, backend version, GPU or checkpoint version) plus engine files no entry
        names, which would otherwise be invisible. The manifest is read once."""
        entries, found = [], []
        for item in self._parse(self._read()):
            if isinstance(item, Problem):
                found.append(item)
                continue
            entries.append(item)
            reason = self.unusable_reason(item, runtime, hash_of)
            if reason:
                found.append(Problem(item.id, reason))
        found += [Problem(name, self._stray_reason(name)) for name in self._strays(entries)]
        return entries, found

    def problems(self, runtime: Runtime | None = None, hash_of: HashLookup | None = None) -> list[Problem]:
        return self.review(runtime, hash_of)[1]

    def strays(self) -> list[str]:
        """Engine files in the folder that no manifest entry names (copied in, or left by an old failure)."""
        return self._strays(self.entries())

    def _strays(self, entries: list[EngineEntry]) -> list[str]:
        named = {e.engine_file for e in entries}
        return sorted(p.name for p in self.folder.glob("*.engine") if p.name not in named) \
            if self.folder.is_dir() else []

    def _stray_reason(self, name: str) -> str:
        if (self.folder / (name + SIDECAR)).is_file():
            return (f"engine file not in the manifest, with its record {name}{SIDECAR} beside it: adopt it to use "
                    "it again, or delete it")
        return (f"engine file not in the manifest (copied in by hand?) and without its record {name}{SIDECAR}: "
                "its checkpoint and profiles are unknown, so it cannot be used; delete it and build the engine here")

    def unusable_reason(self, entry: EngineEntry, runtime: Runtime | None = None,
                        hash_of: HashLookup | None = None) -> str:
        """Why ``entry`` cannot be used here, or "" when it can."""
        try:
            path = self.engine_path(entry)
            self.onnx_path(entry)
        except UnsafeNameError as e:
            return f"{e}: never used; delete it to remove the entry (nothing outside the folder is touched)"
        if not path.is_file():
            return f"engine file {entry.engine_file} is missing"
        if path.stat().st_size != entry.engine_bytes:
            return f"engine file {entry.engine_file} is {path.stat().st_size} bytes, {entry.engine_bytes} expected"
        if hash_of is not None:
            reason = checkpoint_changed(entry, hash_of(entry.checkpoint))
            if reason:
                return reason
        if runtime is None:
            return ""
        if runtime.runs_onnx:
            onnx = self.onnx_path(entry)
            if onnx is None or not onnx.is_file():
                return f"no ONNX export of it ({entry.onnx_file or 'none recorded'}) for the reference runtime to run"
            return ""
        if entry.backend != runtime.backend:
            return f"built with {entry.backend}, but the selected backend is {runtime.backend}"
        if entry.backend_version != runtime.backend_version:
            return (f"built with {entry.backend} {entry.backend_version}, installed is {runtime.backend_version}: "
                    "rebuild it")
        if runtime.compute_capability and runtime.compute_capability not in entry.compute_capabilities:
            return (f"built for compute capability {', '.join(entry.compute_capabilities)}, this GPU is "
                    f"{runtime.compute_capability}: rebuild it")
        return ""

    def usable(self, runtime: Runtime | None = None, hash_of: HashLookup | None = None) -> list[EngineEntry]:
        entries, problems = self.review(runtime, hash_of)
        bad = {p.entry_id for p in problems}
        return [e for e in entries if e.id not in bad]

    # -- writing -----------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Hold the lock around a read-modify-write of the manifest; write it back atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            with self._lock:
                data = self._read()
                yield data
                atomic_write_text(self.manifest_path, json.dumps(data, indent=1) + "\n")
        except Timeout as e:
            raise StoreError(f"{self.manifest_path} is locked by another writer; try again") from e
        except PermissionError as e:
            raise StoreError(f"no permission to write in {self.folder}: {e}") from e

    def new_id(self, checkpoint: str) -> str:
        return f"{file_stem(checkpoint)}-{uuid.uuid4().hex[:8]}"

    def add(self, entry: EngineEntry) -> EngineEntry:
        """Record a complete engine (its file must already be in place)."""
        check_id(entry.id)
        path = self.engine_path(entry)
        if not path.is_file():
            raise StoreError(f"engine file {entry.engine_file} does not exist")
        entry.engine_bytes = path.stat().st_size
        entry.created = entry.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        sidecar = self._sidecar(entry.engine_file)
        written = False
        try:
            with self._locked() as data:
                if any(isinstance(e, dict) and e.get("id") == entry.id for e in data["engines"]):
                    raise StoreError(f"an engine with id {entry.id!r} already exists")
                if not sidecar.is_file():  # adopting keeps the record it was adopted from
                    atomic_write_text(sidecar, json.dumps(entry.to_dict(), indent=1) + "\n")
                    written = True
                data["engines"].append(entry.to_dict())
        except BaseException:
            if written:
                _unlink(sidecar)
            raise
        return entry

    def _sidecar(self, engine_file: str) -> Path:
        return inside(self.folder, engine_file + SIDECAR)

    def _stray(self, name: str) -> Path:
        """The path of a stray engine file, refusing names that are not one (entries, other files, paths)."""
        if not isinstance(name, str) or "/" in name or "\\" in name or not name.endswith(".engine"):
            raise UnsafeNameError(f"{name!r} is not an engine file name in the engine folder")
        if name not in self.strays():
            raise StoreError(f"{name} is not an engine file the manifest lacks: delete engines by their id")
        return inside(self.folder, name)

    def adopt(self, name: str) -> EngineEntry:
        """Record a stray engine file again from its record beside it (``<name>.json``, written by every build).

        Engine files cannot tell their checkpoint, family or profiles themselves, so a file without its record
        cannot be adopted: it can only be deleted.
        """
        path = self._stray(name)
        sidecar = self._sidecar(name)
        again = "delete it and build the engine again"
        if not sidecar.is_file():
            raise UnrecordedEngineError(f"{name} has no record {sidecar.name} beside it, so its checkpoint, family "
                                        f"and profiles are unknown (an engine file does not say them): {again}")
        try:
            entry = EngineEntry.from_dict(json.loads(sidecar.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise UnrecordedEngineError(f"{sidecar} cannot be read ({e}): {again}") from e
        if entry.engine_file != name or path.stat().st_size != entry.engine_bytes:
            raise UnrecordedEngineError(f"{sidecar.name} describes another file ({entry.engine_file}, "
                                        f"{entry.engine_bytes} bytes), not {name} ({path.stat().st_size} bytes): "
                                        f"{again}")
        return self.add(entry)

    def remove_file(self, name: str) -> str:
        """Delete a stray engine file and its record; entries are deleted by id (:meth:`remove`)."""
        path = self._stray(name)
        _unlink(path)
        _unlink(self._sidecar(name))
        return name

    def record_check(self, engine_id: str, report: dict[str, Any]) -> EngineEntry:
        """Store an engine check's report in the engine's entry (the manifest rewritten atomically)."""
        check_id(engine_id)
        with self._locked() as data:
            raw = next((e for e in data["engines"] if isinstance(e, dict) and e.get("id") == engine_id), None)
            if raw is None:
                raise StoreError(f"no engine {engine_id!r} in {self.folder}")
            raw["check"] = report
            return EngineEntry.from_dict(raw)

    def remove(self, engine_id: str) -> EngineEntry:
        """Delete an engine: its manifest entry first, then its file; its ONNX only when no other entry uses it."""
        check_id(engine_id)
        with self._locked() as data:
            parsed = [e for e in self._parse(data) if isinstance(e, EngineEntry)]
            entry = next((e for e in parsed if e.id == engine_id), None)
            if entry is None:
                raise StoreError(f"no engine {engine_id!r} in {self.folder}")
            data["engines"] = [e for e in data["engines"] if not (isinstance(e, dict) and e.get("id") == engine_id)]
            onnx_shared = any(e.onnx_file == entry.onnx_file for e in parsed if e.id != engine_id)
        try:
            _unlink(self.engine_path(entry))
            _unlink(self._sidecar(entry.engine_file))
            onnx = self.onnx_path(entry) if entry.onnx_file and not onnx_shared else None
        except UnsafeNameError:
            return entry  # an entry naming files outside the folder: only the entry goes
        if onnx is not None:
            for f in onnx.parent.glob(onnx.stem + "*"):
                _unlink(f)
            remove_if_empty(onnx.parent)
        return entry

    def cleanup(self) -> list[str]:
        """Remove what interrupted exports and builds left behind; return what was discarded, for the user.

        Partial files carry their writer's process id; those of a process still running are kept.
        """
        if not self.folder.is_dir():
            return []
        discarded = []
        for path in sorted(self.folder.rglob(f"*{TEMP_MARK}*")):
            match = _PARTIAL.search(path.name)
            if match and _pid_alive(int(match.group(1))):
                continue
            if path.is_file():
                _unlink(path)
            elif path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            remove_if_empty(path.parent)
            discarded.append(str(path.relative_to(self.folder)))
        return discarded


def checkpoint_changed(entry: EngineEntry, current: str | None) -> str:
    """Why ``entry`` was built from other weights than its checkpoint has now, or "" when it was not.

    Compares the recorded sha256 with ``current`` (a short recorded hash as a prefix). When either is unknown
    (no hash recorded, the WebUI's 8-digit legacy hash, or the WebUI has not hashed the file) nothing can be
    compared and the engine is matched by the checkpoint's name alone.
    """
    recorded = (entry.checkpoint_hash or "").lower()
    if len(recorded) < 10 or not current or current.lower().startswith(recorded):
        return ""
    return (f"built from another version of {entry.checkpoint} (sha256 {recorded[:10]}, the checkpoint now has "
            f"{current[:10]}; the file was replaced): never used for it. Rebuild it ({entry.build_label()}) with "
            "Rebuild in the TensorRT tab")


def partial_path(final: Path) -> Path:
    """Where to write ``final`` until it is complete (same folder, so the rename is atomic)."""
    return final.with_name(f"{final.name}{TEMP_MARK}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def discard_partials(folder: Path, pid: int) -> None:
    """Remove the partial files process ``pid`` was writing in ``folder`` (it was killed mid-write)."""
    for path in Path(folder).glob(f"*{TEMP_MARK}-{pid}-*"):
        _unlink(path)


_PARTIAL = re.compile(re.escape(TEMP_MARK) + r"-(\d+)-")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        import psutil  # the WebUI ships it; on Windows os.kill cannot probe

        return psutil.pid_exists(pid)
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True


def atomic_write_bytes(path: Path, data: Any) -> None:
    """Write ``data`` (bytes, or a buffer such as a TensorRT host memory) so that readers see the old or the
    new file at ``path``, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(memoryview(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def remove_if_empty(folder: Path) -> None:
    """Drop a per-export folder once nothing is left in it (never the store's own folder)."""
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty, already gone, or not ours to remove
