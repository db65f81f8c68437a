"""Engines in the WebUI over the store's life: a checkpoint replaced under its engines, a manifest that
cannot be read, engine files the manifest lost, one decision whether an engine is offered."""

from __future__ import annotations

import dataclasses

import pytest
import torch

SMALL = {"batch": [1, 1, 4], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 150]}


@pytest.fixture
def replaced(webui):
    """a.safetensors with an engine, then the file overwritten by other weights and loaded again."""
    webui.with_engine("a.safetensors", "sd1", SMALL)
    webui.add_checkpoint("b.safetensors", "sd1", seed=2)
    webui.add_checkpoint("a.safetensors", "sd1", seed=1)  # same name, new weights, newer mtime
    webui.load("b.safetensors")
    webui.load("a.safetensors")
    return webui


@pytest.mark.catalogue("sampling")
def test_a_replaced_checkpoint_never_runs_on_its_old_engines(replaced, monkeypatch):
    webui = replaced
    (entry,) = webui.EXT.store.entries()
    listing = webui.EXT.listing()
    assert "another version of a" in listing.status[entry.id] and "Rebuild" in listing.status[entry.id]
    assert webui.sd_unet.current_unet_option is None  # "Automatic" did not pick its option
    pytorch = webui.txt2img(prompt="a cat", steps=2)
    assert webui.EXT.engines_for("a") == []

    webui.shared.opts.set("sd_unet", "[TRT] a")  # a job naming the option gets the reason
    with pytest.raises(Exception, match="the engines of a are not used: .* built from another version of a") as caught:
        webui.txt2img(prompt="a cat", steps=2)
    assert caught.value.status_code == 409
    webui.shared.opts.set("trt_on_uncovered", "fallback")
    fell_back = webui.txt2img(prompt="a cat", steps=2)
    assert "PyTorch UNet used" in fell_back.info and "another version" in fell_back.info
    assert torch.equal(fell_back.images[0], pytorch.images[0])

    fit = webui.module("trt_webui.fit_check")
    answer = fit.check_fit(fit.FitQuestion(64, 64))
    assert not answer.covered and f"{entry.id}: built from another version of a" in answer.message


def test_hashes_are_read_once_per_change_of_the_file(replaced):
    webui = replaced
    hashes = webui.module("modules.hashes")
    assert [c.rsplit("/", 1)[-1] for c in hashes.calls] == ["a.safetensors", "b.safetensors", "a.safetensors"]
    webui.EXT.listing(), webui.sd_unet.list_unets(), webui.txt2img(prompt="a cat", steps=2)
    assert len(hashes.calls) == 3  # lists and jobs use the hash the load computed, never read the file again


def test_unhashed_checkpoints_are_matched_by_name(webui):
    """--no-hashing: the WebUI has no sha256 for the loaded file, so nothing can tell a replaced one."""
    webui.shared.cmd_opts.no_hashing = True
    webui.with_engine("a.safetensors", "sd1", SMALL)
    (entry,) = webui.EXT.store.entries()
    assert entry.checkpoint_hash is None or entry.checkpoint_hash == ""
    assert entry.id not in webui.EXT.listing().problems
    assert webui.sd_unet.get_unet_option("Automatic").label == "[TRT] a"


@pytest.mark.catalogue("files")
def test_rebuild_builds_the_same_profiles_again_and_replaces_the_old_engine(replaced, monkeypatch):
    webui = replaced
    (old,) = webui.EXT.store.entries()
    asked = {}

    def submit(profiles, loras=None, refit=False, controlnet=False, replaces=""):
        asked.update(profiles=profiles, loras=loras, refit=refit, controlnet=controlnet, replaces=replaces)
        return "job"

    monkeypatch.setattr(webui.EXT, "submit_build", submit)
    assert webui.EXT.rebuild(old.id) == "job"
    assert asked == {"profiles": old.parsed_profiles, "loras": [], "refit": False, "controlnet": False,
                     "replaces": old.id}
    ready = webui.EXT.store.add(dataclasses.replace(old, id=webui.EXT.store.new_id("a"), controlnet=True,
                                                    controlnet_residuals=[[320, 1]]))
    webui.EXT.rebuild(ready.id)  # a ControlNet-ready engine is rebuilt ControlNet-ready
    assert asked["controlnet"] is True and asked["replaces"] == ready.id
    webui.load("b.safetensors")
    with pytest.raises(Exception, match="but b is loaded: load a first"):
        webui.EXT.rebuild(old.id)


@pytest.mark.catalogue("files")
def test_a_build_is_refused_before_the_export_while_the_manifest_is_unreadable(webui):
    webui.add_checkpoint("a.safetensors", "sd1")
    webui.load("a.safetensors")
    store = webui.EXT.store
    store.folder.mkdir(parents=True, exist_ok=True)
    store.manifest_path.write_text('{"engines": []}')
    profile = webui.module("trt_lib.model.profiles").Profile.static(1, 64, 64)
    with pytest.raises(Exception, match=r"manifest.json is not an engine manifest .*\"format\".*Builds are refused"):
        webui.EXT.submit_build([profile])
    assert webui.EXT.jobs.jobs() == [] and sorted(p.name for p in store.folder.iterdir()) == ["manifest.json"]


@pytest.mark.catalogue("sampling")
def test_another_familys_checkpoint_under_the_engines_name_gets_the_mismatch_message(webui):
    """Unhashed (--no-hashing), an SD 1.x file copied over an SDXL checkpoint's name: the family tells."""
    webui.shared.cmd_opts.no_hashing = True
    webui.with_engine("a.safetensors", "sdxl", SMALL)
    webui.add_checkpoint("b.safetensors", "sd1")
    webui.add_checkpoint("a.safetensors", "sd1")
    webui.load("b.safetensors")
    webui.load("a.safetensors")
    assert webui.sd_unet.current_unet_option is None  # "Automatic" leaves it
    webui.shared.opts.set("sd_unet", "[TRT] a")
    with pytest.raises(Exception, match="the engines of a are not used: .* built for SDXL.*but the loaded a is SD 1") \
            as caught:
        webui.txt2img(prompt="a cat", steps=2)
    assert caught.value.status_code == 409


@pytest.mark.catalogue("install")
def test_engines_the_dropdown_does_not_offer_are_listed_with_why(webui):
    """TensorRT selected but not installed here: its engines are neither offered nor listed as usable."""
    webui.add_checkpoint("a.safetensors", "sd1")
    webui.load("a.safetensors")
    entry = webui.add_engine("a.safetensors", "sd1", SMALL)  # the real runtime check, not the stand-in
    webui.sd_unet.list_unets()
    assert webui.shared_items.sd_unet_items() == ["Automatic", "None"]
    reason = webui.EXT.listing().problems[entry.id]
    assert reason.startswith("the selected backend cannot be loaded here: ") and reason.endswith(
        webui.EXT.backend_problem())
    fit = webui.module("trt_webui.fit_check")
    assert f"- not used: {entry.id}: the selected backend cannot" in fit.check_fit(fit.FitQuestion(64, 64)).message


def test_listing_engines_at_start_up_does_not_load_a_checkpoint(webui):
    """The WebUI lists the sd_unet options before it loads the checkpoint (initialize.py: list_unets, then the
    loading thread); reading ``shared.sd_model`` there would load it in the middle of start-up."""
    webui.add_checkpoint("a.safetensors", "sd1")
    webui.use_stand_in()
    webui.add_engine("a.safetensors", "sd1", SMALL)
    webui.sd_unet.list_unets()
    assert webui.sd_models.model_data.sd_model is None
    assert webui.shared_items.sd_unet_items() == ["Automatic", "[TRT] a", "None"]
