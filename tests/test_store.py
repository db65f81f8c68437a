"""The engine store: manifest round trip, atomic writes, two writers, bad files and names."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from trt_lib.errors import StoreError, UnsafeNameError
from trt_lib.model.profiles import Profile
from trt_lib.store.engine_store import EngineEntry, EngineStore, Runtime, partial_path
from trt_lib.store.names import check_id, file_stem, inside

PROFILE = Profile.static(1, 512, 512).to_dict()


def make_entry(store: EngineStore, checkpoint: str = "sub/model v1.safetensors",
               payload: bytes = b"engine") -> EngineEntry:
    engine_id = store.new_id(checkpoint)
    store.folder.mkdir(parents=True, exist_ok=True)
    (store.folder / f"{engine_id}.engine").write_bytes(payload)
    return EngineEntry(engine_id, checkpoint, "abcdef", "sd1", [PROFILE], "tensorrt_rtx", "1.7.1", ["8.9"],
                       f"{engine_id}.engine", 0, onnx_file="onnx/x/unet.onnx", loras=[{"name": "a b", "weight": 0.5}])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def test_manifest_round_trip(tmp_path):
    store = EngineStore(tmp_path)
    entry = store.add(make_entry(store))
    again = EngineStore(tmp_path).get(entry.id)
    assert again == entry and again.engine_bytes == len(b"engine") and again.created
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["format"] == "sd-webui-tensorrt/engines" and data["version"] == 1
    assert "LoRA a b:0.5" in again.label()


@pytest.mark.catalogue("files")
def test_missing_and_mismatched_engines_are_reported_not_used(tmp_path):
    store = EngineStore(tmp_path)
    gone, ok, short = (store.add(make_entry(store)) for _ in range(3))
    (tmp_path / gone.engine_file).unlink()
    (tmp_path / short.engine_file).write_bytes(b"eng")
    runtime = Runtime("tensorrt_rtx", "1.7.1", "8.9")
    assert [e.id for e in store.usable(runtime)] == [ok.id]
    reasons = {p.entry_id: p.reason for p in store.problems(runtime)}
    assert "missing" in reasons[gone.id] and "3 bytes, 6 expected" in reasons[short.id]
    assert "installed is 2.0" in store.unusable_reason(ok, Runtime("tensorrt_rtx", "2.0", "8.9"))
    assert "this GPU is 12.0" in store.unusable_reason(ok, Runtime("tensorrt_rtx", "1.7.1", "12.0"))
    assert "selected backend is tensorrt" in store.unusable_reason(ok, Runtime("tensorrt", "10.8", "8.9"))


@pytest.mark.catalogue("files")
def test_an_engine_file_copied_in_without_its_entry_is_reported(tmp_path):
    store = EngineStore(tmp_path)
    known = store.add(make_entry(store))
    (tmp_path / "from-a-friend.engine").write_bytes(b"engine")
    assert [e.id for e in store.usable()] == [known.id]
    (problem,) = store.problems()
    assert problem.entry_id == "from-a-friend.engine" and "not in the manifest" in problem.reason


@pytest.mark.catalogue("files")
@pytest.mark.parametrize("content, fragment", [
    ("{not json", "cannot be read"),
    ('{"format": "sd-webui-tensorrt/engines", "version": 1, "engines": [', "cannot be read"),  # half-written
    ('{"format": "sd-webui-tensorrt/engines", "version": 99, "engines": []}', "newer version"),
    ('{"format": "other", "version": 1, "engines": []}', "not an engine manifest"),
    ('[1, 2]', "not an engine manifest"),
])
def test_bad_manifest_is_a_clear_error_and_left_as_it_was(tmp_path, content, fragment):
    store = EngineStore(tmp_path)
    (tmp_path / "manifest.json").write_text(content)
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=fragment):
        store.entries()
    with pytest.raises(StoreError, match=fragment):
        store.add(make_entry(store))
    after = snapshot(tmp_path)
    assert after.pop("manifest.json") == before.pop("manifest.json")


@pytest.mark.catalogue("files")
def test_malformed_entry_is_reported_and_the_rest_still_listed(tmp_path):
    store = EngineStore(tmp_path)
    good = store.add(make_entry(store))
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["engines"].append({"id": "../evil", "profiles": []})
    data["engines"].append({**good.to_dict(), "id": "escape", "engine_file": "../../outside.engine"})
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert [e.id for e in store.usable()] == [good.id]
    reasons = {p.entry_id: p.reason for p in store.problems()}
    assert "malformed" in reasons["../evil"] and "outside the engine folder" in reasons["escape"]


def _add_many(folder: str, n: int) -> None:
    store = EngineStore(folder)
    for _ in range(n):
        store.add(make_entry(store, checkpoint=f"writer{os.getpid()}"))


@pytest.mark.catalogue("files")
def test_two_writers_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_many, args=(str(tmp_path), 15)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(EngineStore(tmp_path).entries()) == 30


def test_remove_deletes_entry_and_file_and_keeps_shared_onnx(tmp_path):
    store = EngineStore(tmp_path)
    onnx = tmp_path / "onnx" / "x" / "unet.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"onnx")
    a, b = store.add(make_entry(store)), store.add(make_entry(store))
    store.remove(a.id)
    assert not (tmp_path / a.engine_file).exists() and onnx.exists()
    store.remove(b.id)
    assert not onnx.exists() and store.entries() == []
    with pytest.raises(StoreError, match="no engine"):
        store.remove(b.id)


@pytest.mark.catalogue("interruptions")
def test_cleanup_discards_partial_files_of_dead_writers_only(tmp_path):
    store = EngineStore(tmp_path)
    kept = store.add(make_entry(store))
    dead = tmp_path / f"x.engine.partial-{2**22 + 12345}-abcd"
    dead.write_bytes(b"half")
    mine = partial_path(tmp_path / "y.engine")
    mine.write_bytes(b"in progress")
    assert store.cleanup() == [dead.name]
    assert mine.exists() and not dead.exists() and store.get(kept.id)


@pytest.mark.catalogue("files")
def test_permission_denied_is_a_clear_error_and_keeps_the_manifest(tmp_path, monkeypatch):
    store = EngineStore(tmp_path)
    first = store.add(make_entry(store))
    before = (tmp_path / "manifest.json").read_bytes()

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", denied)  # what a read-only folder does to the final rename
    with pytest.raises(StoreError, match="no permission to write"):
        store.add(make_entry(store))
    monkeypatch.undo()
    assert (tmp_path / "manifest.json").read_bytes() == before and [e.id for e in store.entries()] == [first.id]
    assert not list(tmp_path.glob("manifest.json.partial*"))


@pytest.mark.catalogue("names")
@pytest.mark.parametrize("bad", ["", "../x", "a/b", "/abs", ".hidden", "a\x00b", "x" * 200, 5])
def test_engine_ids_are_checked(bad):
    with pytest.raises(UnsafeNameError):
        check_id(bad)


@pytest.mark.catalogue("names")
@pytest.mark.parametrize("name", ["sub/model.safetensors", "..\\..\\x.ckpt", "a b.c d.safetensors", "\u00e9t\u00e9",
                                  "x" * 300])
def test_file_stems_are_safe_and_distinct(name, tmp_path):
    stem = file_stem(name)
    assert inside(tmp_path, stem + ".engine").parent == tmp_path.resolve()
    assert len(stem) <= 64 and file_stem(name + "2") != stem


@pytest.mark.catalogue("names")
@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../x", "", "a\x00"])
def test_paths_outside_the_folder_are_refused(tmp_path, bad):
    with pytest.raises(UnsafeNameError):
        inside(tmp_path, bad)


SHA_A, SHA_B = "a" * 64, "b" * 64


@pytest.mark.catalogue("files")
def test_an_engine_built_from_a_replaced_checkpoint_is_never_used(tmp_path):
    store = EngineStore(tmp_path)
    entry = make_entry(store)
    entry.checkpoint_hash = SHA_A
    store.add(entry)
    legacy = make_entry(store)
    legacy.checkpoint_hash = "1234abcd"  # the WebUI's old 8-digit hash: nothing to compare with
    store.add(legacy)
    now = {entry.checkpoint: SHA_B}
    assert [e.id for e in store.usable(hash_of=now.get)] == [legacy.id]
    (problem,) = store.problems(hash_of=now.get)
    assert problem.entry_id == entry.id and "another version of sub/model v1.safetensors" in problem.reason
    assert "aaaaaaaaaa" in problem.reason and "bbbbbbbbbb" in problem.reason and "Rebuild" in problem.reason
    assert {e.id for e in store.usable(hash_of={entry.checkpoint: SHA_A}.get)} == {entry.id, legacy.id}
    assert {e.id for e in store.usable(hash_of={}.get)} == {entry.id, legacy.id}  # not hashed yet: by name


@pytest.mark.catalogue("files")
def test_engines_left_without_their_entry_are_adopted_from_their_record_or_deleted(tmp_path):
    store = EngineStore(tmp_path)
    kept = store.add(make_entry(store))
    (tmp_path / "manifest.json").rename(tmp_path / "manifest.broken")  # the manifest moved away
    (tmp_path / "by-hand.engine").write_bytes(b"engine")
    reasons = {p.entry_id: p.reason for p in store.problems()}
    assert "adopt it" in reasons[kept.engine_file] and "delete it" in reasons["by-hand.engine"]
    assert store.adopt(kept.engine_file) == kept
    assert [e.id for e in store.usable()] == [kept.id] and store.strays() == ["by-hand.engine"]
    with pytest.raises(StoreError, match="no record by-hand.engine.json"):
        store.adopt("by-hand.engine")
    for name in (kept.engine_file, "../x.engine", "manifest.json"):  # only stray engine files, nothing else
        with pytest.raises((StoreError, UnsafeNameError)):
            store.remove_file(name)
    assert store.remove_file("by-hand.engine") == "by-hand.engine"
    assert not (tmp_path / "by-hand.engine").exists() and store.problems() == []


@pytest.mark.catalogue("files")
def test_an_entry_pointing_outside_the_folder_is_reported_and_deleted_alone(tmp_path):
    outside = tmp_path / "precious.engine"
    outside.write_bytes(b"not ours")
    store = EngineStore(tmp_path / "engines")
    entry = make_entry(store)
    entry.engine_file = "../precious.engine"
    data = {"format": "sd-webui-tensorrt/engines", "version": 1, "engines": [entry.to_dict()]}
    (store.folder / "manifest.json").write_text(json.dumps(data))
    (problem,) = [p for p in store.problems() if p.entry_id == entry.id]
    assert "outside the engine folder" in problem.reason and "delete it" in problem.reason
    store.remove(entry.id)
    assert store.entries() == [] and outside.read_bytes() == b"not ours"


@pytest.mark.catalogue("files")
def test_a_failed_record_leaves_no_engine_file_behind(tmp_path, monkeypatch):
    from trt_lib.jobs import pipeline
    from trt_lib.jobs.pipeline import BuildRequest, build_stage, export_stage
    from trt_lib.model.families import get_family
    from trt_lib.model.tiny_unets import make_unet

    store = EngineStore(tmp_path)
    family = get_family("sd1")
    request = BuildRequest("model.safetensors", SHA_A, family, [Profile.static(1, 512, 512)])
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"manifest.json cannot be read .*Builds are refused"):
        export_stage(make_unet(family), request, store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # nothing exported

    class Built:  # the backend's build wrote its engine; the manifest broke meanwhile
        backend, backend_version, compute_capabilities, engine_bytes = "tensorrt_rtx", "1.7.1", ("8.9",), 6
        refittable = weight_stripped = False
        seconds = 1.0

    def build(onnx, engine_path, *args, **kwargs):
        engine_path.write_bytes(b"engine")
        (tmp_path / "manifest.json").write_text("{not json")
        return Built()

    (tmp_path / "manifest.json").unlink()
    monkeypatch.setattr(pipeline, "get_backend", lambda name: type("B", (), {"build": staticmethod(build)}))
    with pytest.raises(StoreError, match="cannot be read"):
        build_stage(tmp_path / "unet.onnx", request, store)
    assert not list(tmp_path.glob("*.engine*"))


@pytest.mark.catalogue("files")
def test_a_check_report_is_recorded_in_its_entry_alone(tmp_path):
    store = EngineStore(tmp_path)
    checked, other = store.add(make_entry(store)), store.add(make_entry(store))
    report = {"passed": False, "summary": "CHECK FAILED at profile 1 max: …"}
    assert store.record_check(checked.id, report).check == report
    assert EngineStore(tmp_path).get(checked.id).check == report and store.get(other.id).check == {}
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match="no engine 'gone-12345678'"):
        store.record_check("gone-12345678", report)
    assert snapshot(tmp_path) == before and not list(tmp_path.glob("*.partial*"))


@pytest.mark.catalogue("files")
def test_under_the_reference_runtime_only_the_onnx_export_must_be_there(tmp_path):
    store = EngineStore(tmp_path)
    entry = store.add(make_entry(store))  # built for tensorrt_rtx 1.7.1 on 8.9
    onnx = Runtime("onnxruntime", "1.32.0", None, runs_onnx=True)
    assert "no ONNX export of it (onnx/x/unet.onnx)" in store.unusable_reason(entry, onnx)
    (tmp_path / "onnx" / "x").mkdir(parents=True)
    (tmp_path / "onnx" / "x" / "unet.onnx").write_bytes(b"onnx")
    assert store.usable(onnx) == [entry] and store.usable(Runtime("tensorrt", "10.9", "9.0")) == []


def test_a_malformed_check_makes_the_entry_malformed(tmp_path):
    store = EngineStore(tmp_path)
    entry = store.add(make_entry(store))
    data = json.loads(store.manifest_path.read_text())
    data["engines"][0]["check"] = ["not", "a", "report"]
    store.manifest_path.write_text(json.dumps(data))
    assert store.entries() == [] and "check is list" in store.problems()[0].reason and entry.id
