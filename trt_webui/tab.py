"""The TensorRT tab: build engines for the loaded checkpoint, watch and cancel builds, list, delete, rebuild
and adopt engines (picked from the list), and check whether planned settings are covered."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import gradio as gr
import pandas as pd
from modules import shared

from trt_lib.errors import TrtError
from trt_lib.install_plan import BACKEND_LABELS, InstallStatus, backend_note
from trt_lib.jobs.job_queue import Job
from trt_lib.model.profiles import DIMENSIONS, Profile

from . import engine_check, loaded_model, lora_bake, reference_runtime, settings
from .extension import EXT
from .fit_check import FitQuestion, check_fit

INSTALL_STATUS = settings.EXTENSION_DIR / "install-status.json"
CUSTOM = "Custom (advanced)"
ENGINE_COLUMNS = ["id", "checkpoint", "family", "profiles", "LoRAs", "ControlNet", "backend", "MB", "created",
                  "status", "check"]


def status_markdown() -> str:
    """Loaded checkpoint, its family, and whether the backend works (with the fix when it does not)."""
    lines = []
    try:
        model = loaded_model.current()
        lines.append(f"**Checkpoint:** {model.title} &nbsp; **Family:** {model.family.label}")
    except TrtError as e:
        lines.append(f"**Checkpoint:** {e}")
    backend = settings.backend()
    runtime = EXT.backend_runtime()
    if runtime is None:
        lines.append(f"**{BACKEND_LABELS[backend]} is not available**: {EXT.backend_problem()}")
    else:
        lines.append(f"**Backend:** {BACKEND_LABELS[backend]} {runtime.backend_version}"
                     + (f", GPU compute capability {runtime.compute_capability}" if runtime.compute_capability else ""))
    note = backend_note(backend)
    if note:
        lines.append(note)
    if reference_runtime.selected():
        lines.append(reference_runtime.status())
    status = InstallStatus.read(INSTALL_STATUS)
    if status and status.backend != backend:
        lines.append(f"install.py last ran for {BACKEND_LABELS.get(status.backend, status.backend)}: restart the "
                     f"WebUI so that it installs {BACKEND_LABELS[backend]}.")
    for name, why in (status.failed.items() if status and status.backend == backend else []):
        lines.append(f"**install.py could not install {name}:** " + why.replace("\n", "  \n"))  # kept line breaks
    if EXT.discarded:
        lines.append("Removed unfinished files of an interrupted build: " + ", ".join(EXT.discarded))
    return "\n\n".join(lines)


def preset_choices() -> list[str]:
    """The loaded family's presets, its default first, then the custom profile."""
    try:
        family = loaded_model.current().family
    except TrtError:
        return [CUSTOM]
    default = family.default_preset
    return [default.label] + [p.label for p in family.presets if p is not default] + [CUSTOM]


def refreshed_presets(current: str = "") -> dict:
    """The loaded family's presets, keeping the user's choice if the family offers it, else choosing its
    default. Called without a choice when the page loads: the tab itself is built while the WebUI may still
    be loading the checkpoint, with only the custom profile to offer."""
    choices = preset_choices()
    return gr.update(choices=choices, value=current if current in choices else choices[0])


def number(value: Any, name: str) -> float:
    """A number field's value: Gradio hands over None for an emptied field."""
    try:
        found = float(value)
    except (TypeError, ValueError):
        found = math.nan
    if not math.isfinite(found):
        raise TrtError(f"{name}: enter a number")
    return found


def whole_number(value: Any, name: str) -> int:
    """A number field's value as an int (Gradio's numbers are floats)."""
    found = number(value, name)
    if not found.is_integer():
        raise TrtError(f"{name}: enter a whole number, not {found:g}")
    return int(found)


def profile_from(preset_label: Any, *values: Any) -> Profile:
    """The preset chosen, or the custom min/opt/max fields (batch, height, width, tokens in that order).

    The preset box can hand over a value that is not among its choices: "" when the user typed and left it,
    or a preset of the previous checkpoint's family when the checkpoint changed since the last Refresh."""
    if preset_label == CUSTOM:
        ranges = {d: [whole_number(values[i * 3 + j] if i * 3 + j < len(values) else None, f"{d} {part}")
                      for j, part in enumerate(("min", "opt", "max"))] for i, d in enumerate(DIMENSIONS)}
        return Profile.from_dict(ranges)
    family = loaded_model.current().family
    for preset in family.presets:
        if preset.label == preset_label:
            return preset.profile
    chosen = f"{preset_label!r} is not a preset of {family.label}" if preset_label else "no preset is chosen"
    raise TrtError(f"{chosen}: pick one from the list (press Refresh after a checkpoint change), or "
                   f"{CUSTOM!r} for your own ranges")


def validate(preset_label: Any, *values: Any) -> str:
    """Shown as the user types: every problem of the profile, or what the engine will accept."""
    try:
        profile = profile_from(preset_label, *values)
        family = loaded_model.current().family
    except TrtError as e:
        return f"⚠ {e}"
    problems = profile.problems(family)
    if problems:
        return "⚠ " + "; ".join(problems)
    return (f"✓ {profile.label()} — about {family.memory_estimate_gb(profile):.1f} GB of GPU memory at the "
            "largest size")


def parse_loras(text: Any) -> list[dict[str, Any]]:
    """"name:weight, other" (weight 1 when left out) -> [{"name", "weight"}]."""
    loras = []
    for item in filter(None, (part.strip() for part in str(text or "").split(","))):
        name, _, weight = item.rpartition(":") if ":" in item else (item, "", "1")
        try:
            loras.append({"name": name.strip(), "weight": float(weight)})
        except ValueError:
            raise TrtError(f"LoRA {item!r}: write name:weight, e.g. {name.strip()}:0.8") from None
    return loras


def add_lora(text: Any, name: Any) -> tuple[str, None]:
    """Append a LoRA picked from the WebUI's list to the bake box at weight 1 (edited there), once; a box the
    user left unreadable is kept as typed (the build then says what is wrong with it)."""
    text = str(text or "")
    try:
        present = {lo["name"] for lo in parse_loras(text)}
    except TrtError:
        return text, None
    if not name or not isinstance(name, str) or name in present:
        return text, None
    return ", ".join(filter(None, [text.strip(" ,"), f"{name}:1"])), None


def lora_choices() -> dict:
    """The LoRA picker's list, re-read from the WebUI (LoRAs added since the start appear) when the tab is
    opened or the picker focused."""
    return gr.update(choices=lora_bake.available_names())


def build(progress: gr.Progress = gr.Progress(), *inputs: Any) -> tuple[str, str, pd.DataFrame]:  # noqa: B008
    """The build button: queue the build, then follow it with Gradio's progress bar (stage and fraction).

    Gradio 3.41 hooks up a ``gr.Progress`` only for a positional parameter whose default is one, before any
    ``*args`` (``gradio.helpers.special_args``): hence ``progress`` first and the button's inputs (preset,
    LoRAs, refit, ControlNet-ready, the twelve custom fields) after it."""
    return _build(progress, *inputs)


def build_without_progress(*inputs: Any) -> tuple[str, str, pd.DataFrame]:
    """The build button under ``--no-gradio-queue``: Gradio then refuses to launch at all with a handler that
    tracks progress ("Progress tracking requires queuing to be enabled"), so this one answers at the end."""
    return _build(None, *inputs)


def _build(progress: gr.Progress | None, preset_label: Any = None, lora_text: Any = "", refit: Any = False,
           controlnet: Any = False, *values: Any) -> tuple[str, str, pd.DataFrame]:
    try:
        job = EXT.submit_build([profile_from(preset_label, *values)], parse_loras(lora_text), refit=bool(refit),
                               controlnet=bool(controlnet))
    except TrtError as e:
        return f"⚠ {e}", "", engine_rows()
    while job.state in ("queued", "running"):
        if progress is not None:
            progress(job.progress, desc=job_stage(job))
        time.sleep(0.25)
    text = {"done": "✓ Engine built: ", "cancelled": "Cancelled: ", "failed": "⚠ Build failed: "}[job.state]
    detail = job.result.id if job.finished_ok else job.message
    return text + detail, job.id, engine_rows()


def job_stage(job: Job) -> str:
    """What the progress bar says: the stage (export, build, writing…), or that a cancel is under way."""
    if job.cancel.is_set():
        return "cancelling…"
    return job.stage or ("waiting for the build before it" if job.state == "queued" else "starting")


def cancel(job_id: Any) -> str:
    for job in EXT.jobs.jobs():
        if job.state in ("queued", "running") and (not job_id or job.id == job_id):
            EXT.jobs.cancel(job.id)
            return "Cancelling… (within a few seconds; nothing half-written is kept)"
    return "No build is running."


def engine_rows() -> pd.DataFrame:
    """The engine table: every entry, then the engine files the manifest lacks, each with why it is not used.
    A DataFrame so that Gradio 3.41 shows the column names also when there is no row (a list has none)."""
    try:
        listing = EXT.listing()
    except TrtError as e:
        return pd.DataFrame([["", "", "", str(e), "", "", "", "", "", "error", ""]], columns=ENGINE_COLUMNS)
    rows = [[e.id, e.checkpoint, e.family, "; ".join(p.label() for p in e.parsed_profiles), e.lora_label,
             "ready" if e.controlnet else "", f"{e.backend} {e.backend_version}", round(e.engine_bytes / 2**20, 1),
             local_time(e.created), listing.status[e.id] or "ok", e.check.get("summary", "not checked")]
            for e in listing.entries]
    rows += [[name, "", "", "", "", "", "", "", "", why, ""] for name, why in _stray_files(listing).items()]
    return pd.DataFrame(rows, columns=ENGINE_COLUMNS)


def local_time(stamp: str) -> str:
    """The manifest's ISO time stamp as this machine's local date and time, to the minute."""
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return stamp


def _stray_files(listing: Any) -> dict[str, str]:
    known = {e.id for e in listing.entries}
    return {k: v for k, v in listing.problems.items() if k not in known and k.endswith(".engine")}


def engine_choices() -> dict[str, tuple[str, str]]:
    """The engine picker's labels, each naming ("entry", id) or ("file", name), in the table's order."""
    try:
        listing = EXT.listing()
    except TrtError:
        return {}
    choices = {f"{e.id} — {e.checkpoint}, {e.build_label()}": ("entry", e.id) for e in listing.entries}
    return choices | {f"{name} — file not in the manifest": ("file", name) for name in _stray_files(listing)}


def engine_picker(value: str | None = None) -> dict:
    """The picker's choices now, keeping ``value`` when it is still there."""
    choices = list(engine_choices())
    return gr.update(choices=choices, value=value if value in choices else None)


def pick_row(table: pd.DataFrame, event: gr.SelectData) -> dict:
    """A click in the engine table picks that row's engine (or file) for Delete, Rebuild and Adopt."""
    row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
    name = str(table.iloc[row, 0]) if 0 <= row < len(table) else ""
    label = next((k for k, (_, key) in engine_choices().items() if key == name), None)
    return engine_picker(label)


def _picked(choice: Any) -> tuple[str, str]:
    if not choice or not isinstance(choice, str):
        raise TrtError("pick an engine first: in the list below the table, or click its row")
    picked = engine_choices().get(choice)
    if picked is None:
        raise TrtError(f"{choice.split(' — ')[0]} is no longer in the engine list")
    return picked


def delete(choice: str | None) -> tuple[str, pd.DataFrame, dict]:
    """Delete the picked engine, or the picked engine file the manifest does not know."""
    try:
        kind, key = _picked(choice)
        if kind == "entry":
            EXT.delete(key)
        else:
            EXT.delete_file(key)
        message = f"Deleted {key}."
    except TrtError as e:
        message = f"⚠ {e}"
    return message, engine_rows(), engine_picker()


def check_engine(choice: Any, progress: gr.Progress = gr.Progress()) -> tuple[str, pd.DataFrame]:  # noqa: B008
    """Check engine: the picked engine's figures against the PyTorch UNet, with what to do when it fails."""
    return _check_engine(choice, lambda f, text: progress(f, desc=text))


def check_engine_without_progress(choice: Any) -> tuple[str, pd.DataFrame]:
    """Check engine under ``--no-gradio-queue``, where Gradio launches no page with a progress-tracking handler."""
    return _check_engine(choice, None)


def _check_engine(choice: Any, progress: Callable[[float, str], None] | None) -> tuple[str, pd.DataFrame]:
    try:
        kind, key = _picked(choice)
        if kind != "entry":
            raise TrtError(f"{key} is not in the manifest: adopt it first, then check it")
        entry, report = engine_check.check(key, progress=progress)
        return engine_check.report_markdown(entry, report), engine_rows()
    except TrtError as e:
        return f"⚠ {e}", engine_rows()


def adopt(choice: str | None) -> tuple[str, pd.DataFrame, dict]:
    """Record a picked engine file the manifest lost again, from its record beside it."""
    try:
        kind, key = _picked(choice)
        if kind != "file":
            raise TrtError(f"{key} is in the manifest already; Adopt is for engine files it does not list")
        message = f"Adopted {key} as engine {EXT.adopt_file(key).id}."
    except TrtError as e:
        message = f"⚠ {e}"
    return message, engine_rows(), engine_picker()


def rebuild(choice: str | None) -> tuple[str, str]:
    """Build the picked engine again with its profiles, LoRAs and refit choice; the old one goes when done."""
    try:
        kind, key = _picked(choice)
        if kind != "entry":
            raise TrtError(f"{key} has no record of how it was built: delete it and build the engine above")
        job = EXT.rebuild(key)
    except TrtError as e:
        return f"⚠ {e}", ""
    return (f"Rebuilding {key} ({job.description}); it is replaced when the build ends. Cancel stops it; "
            "Refresh shows the new engine."), job.id


def fit(width: Any, height: Any, batch: Any, hires: Any, scale: Any, tokens: Any, negative: Any) -> str:
    try:
        return check_fit(FitQuestion(
            whole_number(width, "width"), whole_number(height, "height"), whole_number(batch, "batch size"),
            bool(hires), number(scale, "upscale by"), whole_number(tokens, "prompt tokens"),
            whole_number(negative, "negative tokens"))).message
    except TrtError as e:
        return f"⚠ {e}"


def on_ui_tabs() -> list[tuple[gr.Blocks, str, str]]:
    with gr.Blocks(analytics_enabled=False) as ui:
        status = gr.Markdown(status_markdown)
        with gr.Row():
            with gr.Column():
                preset = gr.Dropdown(preset_choices(), value=preset_choices()[0], label="Profile preset",
                                     elem_id="trt_preset")
                with gr.Accordion("Custom profile (min / opt / max)", open=False):
                    fields = []
                    defaults = {"batch": (1, 1, 4), "height": (512, 512, 768), "width": (512, 512, 768),
                                "tokens": (75, 75, 150)}
                    for dim in DIMENSIONS:
                        with gr.Row():
                            fields += [gr.Number(v, label=f"{dim} {part}", precision=0)
                                       for v, part in zip(defaults[dim], ("min", "opt", "max"))]
                check = gr.Markdown(elem_id="trt_profile_check")
                with gr.Row():
                    loras = gr.Textbox(label="LoRAs to bake into the engine (name:weight, comma-separated; "
                                       f"weights {lora_bake.WEIGHTS})",
                                       elem_id="trt_loras", info=lora_bake.TEXT_ENCODER_NOTE, scale=3)
                    lora_pick = gr.Dropdown(lora_bake.available_names(), label="Add a LoRA", elem_id="trt_lora_pick",
                                            scale=1)
                lora_pick.change(add_lora, [loras, lora_pick], [loras, lora_pick])
                lora_pick.focus(lora_choices, None, lora_pick)
                lora_refresh = gr.Button(visible=False, elem_id="trt_lora_refresh")  # trt.js: tab opened
                lora_refresh.click(lora_choices, None, lora_pick)
                refit = gr.Checkbox(False, label="Switch prompt LoRAs without a rebuild (refittable engine)",
                                    elem_id="trt_refit", info="Prompt <lora:name:weight> then reaches the UNet by "
                                    "refitting the engine. Refittable engines run a little slower, and TensorRT "
                                    "for RTX needs the GPU while building them.")
                controlnet = gr.Checkbox(False, label="ControlNet-ready", elem_id="trt_controlnet",
                                         info="The engine takes the ControlNet extension's residuals, so "
                                         "ControlNet jobs run on it (jobs without ControlNet too). Not for the "
                                         "SDXL refiner.")
                with gr.Row():
                    build_button = gr.Button("Export and build engine", variant="primary", elem_id="trt_build")
                    cancel_button = gr.Button("Cancel", elem_id="trt_cancel")
                result = gr.Markdown(elem_id="trt_result")
                job_id = gr.Textbox(visible=False)
            with gr.Column():
                gr.Markdown("### Will my settings work?")
                with gr.Row():
                    fw, fh = gr.Number(512, label="width", precision=0), gr.Number(512, label="height", precision=0)
                    fb = gr.Number(1, label="batch size", precision=0)
                with gr.Row():
                    fhr, fsc = gr.Checkbox(False, label="hires fix"), gr.Number(2.0, label="upscale by")
                with gr.Row():
                    ft = gr.Number(75, label="prompt tokens", precision=0)
                    fn = gr.Number(75, label="negative prompt tokens", precision=0)
                fit_button, fit_answer = gr.Button("Check"), gr.Markdown()
        gr.Markdown("### Engines")
        engines = gr.Dataframe(engine_rows, headers=ENGINE_COLUMNS, interactive=False, wrap=True)
        with gr.Row():
            picked = gr.Dropdown(list(engine_choices()), label="Engine (or click its row)", elem_id="trt_engine_pick",
                                 scale=3)
            check_button = gr.Button("Check engine", elem_id="trt_check")
            delete_button, rebuild_button = gr.Button("Delete"), gr.Button("Rebuild")
            adopt_button, refresh_button = gr.Button("Adopt file"), gr.Button("Refresh")
        deleted = gr.Markdown()

        for component in [preset, *fields]:
            component.change(validate, [preset, *fields], check)
        queued = not shared.cmd_opts.no_gradio_queue
        handler, checker = (build, check_engine) if queued else (build_without_progress, check_engine_without_progress)
        build_button.click(handler, [preset, loras, refit, controlnet, *fields], [result, job_id, engines]).then(
            engine_picker, picked, picked).then(None, _js="trtRefreshUnetList")
        cancel_button.click(cancel, job_id, result)
        engines.select(pick_row, engines, picked)
        check_button.click(checker, picked, [deleted, engines])
        delete_button.click(delete, picked, [deleted, engines, picked]).then(None, _js="trtRefreshUnetList")
        adopt_button.click(adopt, picked, [deleted, engines, picked]).then(None, _js="trtRefreshUnetList")
        rebuild_button.click(rebuild, picked, [deleted, job_id])
        refresh_button.click(lambda current, engine: (engine_rows(), status_markdown(), refreshed_presets(current),
                                                      engine_picker(engine)),
                             [preset, picked], [engines, status, preset, picked])
        fit_button.click(fit, [fw, fh, fb, fhr, fsc, ft, fn], fit_answer)
        ui.load(refreshed_presets, [], preset)
    return [(ui, "TensorRT", "tensorrt")]
