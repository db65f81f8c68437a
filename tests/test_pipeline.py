"""The whole library path per family: tiny UNet → ONNX → TensorRT-for-RTX engine (built here, on the CPU, for
compute capability 8.9) → manifest → the stand-in runtime through the runner interface, against PyTorch."""

from __future__ import annotations

import errno
import threading

import pytest
import torch

from trt_lib.engines.onnx_runtime import reference_runner
from trt_lib.errors import BuildCancelled, BuildError, EngineRunError, ExportError
from trt_lib.jobs.pipeline import BuildRequest, build_engine, export_stage
from trt_lib.model.families import get_family, load_families
from trt_lib.model.profiles import Profile, UnetCall, context_len
from trt_lib.store.engine_store import EngineStore

pytest.importorskip("tensorrt_rtx")


SMALL = Profile.from_dict({"batch": [1, 1, 2], "height": [64, 64, 128], "width": [64, 64, 128],
                           "tokens": [75, 75, 150]})
"""A profile the tiny UNets run in well under a second. At the presets' sizes (512-1024 px) their attention
over every latent pixel needs GBs (sd2-v's batch 4 at 768 px: 20 GB), whatever the channels."""


def request_for(family_name: str, profiles: list[Profile] | None = None, **kwargs) -> BuildRequest:
    """A build request for ``family_name`` (its default preset unless ``profiles``), for TensorRT for RTX."""
    family = get_family(family_name)
    return BuildRequest(f"ckpt-{family_name}", "abc123", family, profiles or [family.default_preset.profile],
                        backend="tensorrt_rtx", compute_capability="8.9", dtype=torch.float32, **kwargs)


def manifest_bytes(store: EngineStore) -> bytes | None:
    path = store.folder / "manifest.json"
    return path.read_bytes() if path.is_file() else None


def corner_calls(profile: Profile) -> list[UnetCall]:
    """The calls at a profile's corners: most rows (cond and uncond apart, longest prompt) at the smallest
    size, and one row at the largest, non-square size with the shortest prompt."""
    lo, hi = profile.height.min // 8, profile.height.max // 8
    return [UnetCall(2 * profile.batch.max, lo, lo, context_len(profile.tokens.max)),
            UnetCall(profile.batch.min, hi, lo, context_len(profile.tokens.min))]


@pytest.mark.parametrize("family_name", sorted(load_families()))
def test_each_family_exports_builds_records_and_runs(family_name, tiny_unet, tmp_path):
    """The family's default preset and a small profile in one engine: the preset is what the tab builds; the
    engine runs (on the stand-in) at the small profile's corners, and the preset's corners select its profile."""
    unet, family = tiny_unet(family_name), get_family(family_name)
    preset = family.default_preset.profile
    store = EngineStore(tmp_path / "engines")
    stages: list[float] = []
    entry = build_engine(unet, request_for(family_name, [preset, SMALL]), store,
                         progress=lambda stage, f: stages.append(f))

    assert stages == sorted(stages) and stages[-1] == 1.0
    again = EngineStore(tmp_path / "engines").get(entry.id)  # manifest round trip, from a fresh reader
    assert again == entry and again.backend == "tensorrt_rtx" and again.compute_capabilities == ["8.9"]
    assert again.parsed_profiles == [preset, SMALL]
    assert store.engine_path(again).stat().st_size == again.engine_bytes > 0
    assert store.usable() == [again]

    runner = reference_runner(store, again)
    for index, profile in enumerate((preset, SMALL)):
        for call in corner_calls(profile):
            feeds = family.example_inputs(call.batch, call.height, call.width, call.context_len, seed=3)
            assert runner.select_profile(feeds) == index, call
            if profile is SMALL:
                with torch.no_grad():
                    ref = unet(feeds["sample"], feeds["timesteps"], feeds["encoder_hidden_states"], y=feeds.get("y"))
                out = runner(feeds)
                assert out.shape == ref.shape and torch.isfinite(out).all()
                assert float((out - ref).norm() / ref.norm()) <= 1e-4, call


@pytest.mark.catalogue("interruptions")
def test_cancel_during_the_build_leaves_the_store_as_it_was(tiny_unet, tmp_path):
    store = EngineStore(tmp_path / "engines")
    first = build_engine(tiny_unet("sd1"), request_for("sd1"), store)
    before = manifest_bytes(store)
    cancel = threading.Event()

    def progress(stage: str, fraction: float) -> None:
        if stage.startswith("building:"):
            cancel.set()

    with pytest.raises(BuildCancelled):
        build_engine(tiny_unet("sd1"), request_for("sd1"), store, progress=progress, cancel=cancel)
    assert manifest_bytes(store) == before and [e.id for e in store.entries()] == [first.id]
    assert sorted(p.name for p in store.folder.glob("*.engine")) == [first.engine_file]


@pytest.mark.catalogue("files")
def test_disk_full_during_export_is_a_clear_error_and_leaves_nothing(tiny_unet, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full)
    store = EngineStore(tmp_path / "engines")
    with pytest.raises(ExportError, match="No space left on device"):
        export_stage(tiny_unet("sd1"), request_for("sd1"), store)
    assert [p for p in store.folder.rglob("*") if p.is_file()] == []


@pytest.mark.catalogue("files")
def test_disk_full_while_writing_the_engine_is_a_clear_error_and_records_nothing(tiny_unet, tmp_path, monkeypatch):
    store = EngineStore(tmp_path / "engines")
    onnx_path = export_stage(tiny_unet("sd1"), request_for("sd1"), store)
    # The engine is written by the build's child process: a disk that is full there (os.fsync is where files
    # are written atomically), through a sitecustomize the child imports at start.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import errno, os\n\n\ndef full(fd):\n    raise OSError(errno.ENOSPC, 'No space left on device')\n\n\n"
        "os.fsync = full\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    with pytest.raises(BuildError, match="No space left on device.*Free some disk space"):
        build_engine(tiny_unet("sd1"), request_for("sd1"), store)
    assert store.entries() == [] and list(store.folder.glob("*.engine*")) == []
    assert onnx_path.is_file()  # the export stays for the next try


@pytest.mark.catalogue("files")
def test_an_engine_whose_onnx_went_missing_is_a_clear_error(tiny_unet, tmp_path):
    store = EngineStore(tmp_path / "engines")
    entry = build_engine(tiny_unet("sd1"), request_for("sd1"), store)
    store.onnx_path(entry).unlink()
    with pytest.raises(EngineRunError, match="cannot load"):
        reference_runner(store, entry)
