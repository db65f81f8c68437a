"""Profiles, families and the matching of job shapes to engines, as tables of cases."""

from __future__ import annotations

import pytest

from trt_lib.engines.matching import choose, covering_profile, plan
from trt_lib.errors import FamilyError, NoProfileError, ProfileError
from trt_lib.model.families import UnetTraits, detect_family, get_family, load_families
from trt_lib.model.job_shapes import JobSpec, Pass, unet_calls
from trt_lib.model.profiles import Profile, Range, UnetCall
from trt_lib.store.engine_store import EngineEntry

SD1 = get_family("sd1")
SDXL = get_family("sdxl")


def profile(batch, size, tokens) -> Profile:
    return Profile.from_dict({"batch": batch, "height": size, "width": size, "tokens": tokens})


def entry(engine_id: str, *profiles: Profile, created: str = "2026-01-01T00:00:00") -> EngineEntry:
    return EngineEntry(engine_id, "model", "abc", "sd1", [p.to_dict() for p in profiles], "tensorrt_rtx", "1.7",
                       ["8.9"], f"{engine_id}.engine", 1, created=created)


@pytest.mark.catalogue("profiles")
@pytest.mark.parametrize("data, fragment", [
    ({"batch": [2, 1, 4], "height": 512, "width": 512, "tokens": 75}, "batch: needs min <= opt <= max"),
    ({"batch": [1, 4, 2], "height": 512, "width": 512, "tokens": 75}, "batch: needs min <= opt <= max"),
    ({"batch": 0, "height": 512, "width": 512, "tokens": 75}, "batch: min must be at least 1"),
    ({"batch": 1, "height": -64, "width": 512, "tokens": 75}, "height: min must be at least 1"),
    ({"batch": 1, "height": 520, "width": 512, "tokens": 75}, "height: sizes must be multiples of 64 px (520 -> 512)"),
    ({"batch": 1, "height": 512, "width": [512, 512, 700], "tokens": 75}, "700 -> 704"),
    ({"batch": 1, "height": 512, "width": 512, "tokens": 0}, "tokens: min must be at least 1"),
    ({"batch": 1, "height": 512, "width": 512, "tokens": 76}, "tokens: prompt tokens come in chunks of 75 (76 -> 150)"),
    ({"batch": 1, "height": 512, "width": 512, "tokens": 375}, "over SD 1.x's limit of 300"),
    ({"batch": 1, "height": 8192, "width": 512, "tokens": 75}, "would need about"),
    ({"batch": 256, "height": 512, "width": 512, "tokens": 75}, "batch: 256 is over SD 1.x's limit of 16"),
])
def test_invalid_profiles_name_the_problem(data, fragment):
    with pytest.raises(ProfileError, match=None) as err:
        Profile.from_dict(data).validate(SD1)
    assert fragment in str(err.value)


@pytest.mark.catalogue("profiles")
@pytest.mark.parametrize("data", [
    {"batch": 1, "height": 512, "width": 512},
    {"batch": "1", "height": 512, "width": 512, "tokens": 75},
    {"batch": [1, 2], "height": 512, "width": 512, "tokens": 75},
    {"batch": 1.5, "height": 512, "width": 512, "tokens": 75},
    {"batch": True, "height": 512, "width": 512, "tokens": 75},
    [1, 2, 3],
])
def test_malformed_profiles_are_refused(data):
    with pytest.raises(ProfileError):
        Profile.from_dict(data)


def test_every_family_preset_is_valid_and_has_a_default():
    families = load_families()
    expected = {"sd1", "sd1-inpaint", "sd2", "sd2-v", "sd2-inpaint", "sdxl", "sdxl-refiner", "sdxl-inpaint"}
    assert expected <= set(families)
    for fam in families.values():
        for preset in fam.presets:
            preset.profile.validate(fam)
        assert fam.default_preset.default


def test_engine_shapes_count_cond_and_uncond():
    shapes = SD1.engine_shapes(profile([1, 1, 4], [512, 512, 768], [75, 75, 150]))
    assert shapes["sample"] == ((1, 4, 64, 64), (2, 4, 64, 64), (8, 4, 96, 96))
    assert shapes["encoder_hidden_states"] == ((1, 77, 768), (2, 77, 768), (8, 154, 768))
    assert shapes["timesteps"] == ((1,), (2,), (8,))
    xl = SDXL.engine_shapes(SDXL.default_preset.profile)
    assert xl["y"] == ((1, 2816), (2, 2816), (2, 2816))


@pytest.mark.parametrize("traits, name", [
    (UnetTraits(4, 768), "sd1"), (UnetTraits(9, 768), "sd1-inpaint"), (UnetTraits(4, 1024), "sd2"),
    (UnetTraits(4, 1024, None, "v"), "sd2-v"), (UnetTraits(9, 1024), "sd2-inpaint"),
    (UnetTraits(4, 2048, 2816), "sdxl"), (UnetTraits(4, 1280, 2560), "sdxl-refiner"),
    (UnetTraits(9, 2048, 2816), "sdxl-inpaint"),
])
def test_families_are_detected_from_traits(traits, name):
    assert detect_family(traits).name == name


@pytest.mark.catalogue("profiles")
def test_unknown_family_is_a_clear_error():
    with pytest.raises(FamilyError, match="no model family matches .*in_channels=8"):
        detect_family(UnetTraits(8, 768))
    with pytest.raises(FamilyError, match="unknown model family 'sd3'; known: .*sd1"):
        get_family("sd3")


B1, B2 = 512 // 8, 768 // 8


@pytest.mark.parametrize("spec, expected", [
    # baseline: cond and uncond in one call
    (JobSpec(1, (Pass(512, 512, 75, 75),)), [(2, B1, B1, 77)]),
    (JobSpec(4, (Pass(512, 512, 75, 75),)), [(8, B1, B1, 77)]),
    # long prompt, short negative: separate calls of batch B with their own lengths
    (JobSpec(1, (Pass(512, 512, 150, 75),)), [(1, B1, B1, 77), (1, B1, B1, 154)]),
    (JobSpec(2, (Pass(512, 512, 150, 75),)), [(2, B1, B1, 77), (2, B1, B1, 154)]),
    (JobSpec(2, (Pass(512, 512, 150, 75),), batch_cond_uncond=False), [(2, B1, B1, 77), (2, B1, B1, 154)]),
    # padding options make both lengths equal again
    (JobSpec(1, (Pass(512, 512, 150, 75),), pad_cond_uncond=True), [(2, B1, B1, 154)]),
    (JobSpec(1, (Pass(512, 512, 75, 150),), pad_cond_uncond_v0=True), [(2, B1, B1, 77)]),
    (JobSpec(1, (Pass(512, 512, 75, 150),), pad_cond_uncond=True, pad_cond_uncond_v0=True), [(2, B1, B1, 77)]),
    # NGMS / skip early CFG: some steps without uncond
    (JobSpec(2, (Pass(512, 512, 75, 75),), skips_uncond=True), [(2, B1, B1, 77), (4, B1, B1, 77)]),
    (JobSpec(2, (Pass(512, 512, 75, 75),), batch_cond_uncond=False), [(2, B1, B1, 77)]),
    # hires fix: both sizes
    (JobSpec(1, (Pass(512, 512, 75, 75), Pass(768, 768, 75, 75))), [(2, B1, B1, 77), (2, B2, B2, 77)]),
    # AND: two cond rows per image
    (JobSpec(1, (Pass(512, 512, 75, 75),), cond_repeats=2), [(3, B1, B1, 77)]),
])
def test_job_shapes_follow_the_cfg_denoiser(spec, expected):
    assert [(c.batch, c.latent_height, c.latent_width, c.context_len) for c in unet_calls(spec)] == expected


DYN = profile([1, 1, 4], [512, 512, 768], [75, 75, 150])
STATIC = profile(1, 512, 75)


@pytest.mark.catalogue("sampling")
@pytest.mark.parametrize("call, misses", [
    (UnetCall(2, 64, 64, 77), []),
    (UnetCall(1, 64, 64, 77), []),
    (UnetCall(8, 96, 64, 154), []),
    (UnetCall(10, 64, 64, 77), ["10 rows at once (a row per image for the prompt and another for the negative "
                                "prompt) are sent, but the engine (batch size 1-4) takes 1-8 rows: two per image, "
                                "one for the prompt and one for the negative prompt"]),
    (UnetCall(2, 128, 64, 77), ["height 1024 px is 256 px over the engine's maximum of 768 px"]),
    (UnetCall(2, 48, 64, 77), ["height 384 px is 128 px under the engine's minimum of 512 px"]),
    (UnetCall(2, 64, 64, 231), ["the prompt or negative prompt needs 225 tokens, 75 over the engine's maximum of 150"]),
    (UnetCall(2, 65, 64, 77), ["height 520 px is off the 64 px grid engines need"]),
])
def test_profile_misses_say_which_dimension_and_by_how_much(call, misses):
    assert DYN.misses(call) == misses


def test_matching_prefers_the_narrowest_profile_and_explains_misses():
    dyn, static = entry("dyn", DYN), entry("static", STATIC, created="2025-01-01T00:00:00")
    assert choose([dyn, static], UnetCall(2, 64, 64, 77)).entry.id == "static"
    assert choose([dyn, static], UnetCall(1, 64, 64, 154)).entry.id == "dyn"
    calls = unet_calls(JobSpec(1, (Pass(512, 512, 75, 75), Pass(1024, 1024, 75, 75))))
    with pytest.raises(NoProfileError) as err:
        plan([dyn, static], calls, SD1, "model")
    text = str(err.value)
    assert "1024x1024 px" in text and "nearest engine, dyn" in text and "256 px over the engine's maximum" in text
    assert "hires-512-1024" in text  # the preset that covers both passes


def test_suggestion_without_engines_and_for_off_grid_sizes():
    with pytest.raises(NoProfileError, match="no engine for this checkpoint yet(.|\n)*dynamic-512-768"):
        plan([], unet_calls(JobSpec(1, (Pass(512, 512, 75, 75),))), SD1, "model")
    with pytest.raises(NoProfileError, match="not on the 64 px grid"):
        plan([], unet_calls(JobSpec(1, (Pass(520, 512, 75, 75),))), SD1, "model")


def test_covering_profile_spans_all_calls():
    calls = unet_calls(JobSpec(3, (Pass(512, 512, 150, 75), Pass(1024, 768, 150, 75))))
    p = covering_profile(calls)
    assert p.batch == Range(3, 3, 3) or p.batch.min <= 3 <= 2 * p.batch.max
    assert all(p.covers(c) for c in calls)
