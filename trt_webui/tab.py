"""The TensorRT tab: build engines for the loaded checkpoint, watch and cancel builds, list and delete
engines, and check whether planned settings are covered."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from trt_lib.errors import TrtError
from trt_lib.install_plan import BACKEND_LABELS, InstallStatus
from trt_lib.profiles import DIMENSIONS, Profile

from . import loaded_model, lora_bake, settings
from .extension import EXT
from .fit_check import FitQuestion, check_fit

INSTALL_STATUS = settings.EXTENSION_DIR / "install-status.json"
CUSTOM = "Custom (advanced)"
ENGINE_COLUMNS = ["id", "checkpoint", "family", "profiles", "LoRAs", "ControlNet", "backend", "MB", "created",
                  "status"]


def status_markdown() -> str:
    """Loaded checkpoint, its family, and whether the backend works (with the fix when it does not)."""
    lines = []
    try:
        model = loaded_model.current()
        lines.append(f"**Checkpoint:** {model.title} &nbsp; **Family:** {model.family.label}")
    except TrtError as e:
        lines.append(f"**Checkpoint:** {e}")
    backend = settings.backend()
    runtime = EXT.runtime()
    if runtime is None:
        lines.append(f"**{BACKEND_LABELS[backend]} is not available**: {EXT.backend_problem()}")
    else:
        lines.append(f"**Backend:** {BACKEND_LABELS[backend]} {runtime.backend_version}"
                     + (f", GPU compute capability {runtime.compute_capability}" if runtime.compute_capability else ""))
    status = InstallStatus.read(INSTALL_STATUS)
    for name, why in (status.failed.items() if status else []):
        lines.append(f"**install.py could not install {name}:** {why}")
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


def profile_from(preset_label: str, *values: float) -> Profile:
    """The preset chosen, or the custom min/opt/max fields (batch, height, width, tokens in that order)."""
    if preset_label != CUSTOM:
        family = loaded_model.current().family
        return next(p.profile for p in family.presets if p.label == preset_label)
    ranges = {d: [int(v) for v in values[i * 3:i * 3 + 3]] for i, d in enumerate(DIMENSIONS)}
    return Profile.from_dict(ranges)


def validate(preset_label: str, *values: float) -> str:
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


def parse_loras(text: str) -> list[dict[str, Any]]:
    """"name:weight, other" (weight 1 when left out) -> [{"name", "weight"}]."""
    loras = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, weight = item.rpartition(":") if ":" in item else (item, "", "1")
        try:
            loras.append({"name": name.strip(), "weight": float(weight)})
        except ValueError:
            raise TrtError(f"LoRA {item!r}: write name:weight, e.g. {name.strip()}:0.8") from None
    return loras


def add_lora(text: str, name: str | None) -> tuple[str, None]:
    """Append a LoRA picked from the WebUI's list to the bake box at weight 1 (edited there), once."""
    if not name or name in {lo["name"] for lo in parse_loras(text)}:
        return text, None
    return ", ".join(filter(None, [(text or "").strip(" ,"), f"{name}:1"])), None


def build(preset_label: str, lora_text: str, refit: bool, controlnet: bool, *values: Any,
          progress: gr.Progress = gr.Progress()) -> tuple[str, str, list]:  # noqa: B008
    try:
        job = EXT.submit_build([profile_from(preset_label, *values)], parse_loras(lora_text), refit=bool(refit),
                               controlnet=bool(controlnet))
    except TrtError as e:
        return f"⚠ {e}", "", engine_rows()
    while job.state in ("queued", "running"):
        progress(job.progress, desc=job.stage or job.state)
        time.sleep(0.25)
    text = {"done": "✓ Engine built: ", "cancelled": "Cancelled: ", "failed": "⚠ Build failed: "}[job.state]
    detail = job.result.id if job.finished_ok else job.message
    return text + detail, job.id, engine_rows()


def cancel(job_id: str) -> str:
    for job in EXT.jobs.jobs():
        if job.state in ("queued", "running") and (not job_id or job.id == job_id):
            EXT.jobs.cancel(job.id)
            return "Cancelling… nothing half-written is kept."
    return "No build is running."


def engine_rows() -> list[list[Any]]:
    try:
        listing = EXT.listing()
    except TrtError as e:
        return [["", "", "", str(e), "", "", "", "", "", "error"]]
    return [[e.id, e.checkpoint, e.family, "; ".join(p.label() for p in e.parsed_profiles), e.lora_label,
             "ready" if e.controlnet else "", f"{e.backend} {e.backend_version}", round(e.engine_bytes / 2**20, 1),
             e.created, listing.status[e.id] or "ok"] for e in listing.entries]


def delete(engine_id: str) -> tuple[str, list]:
    try:
        EXT.delete(engine_id.strip())
        return f"Deleted {engine_id}.", engine_rows()
    except TrtError as e:
        return f"⚠ {e}", engine_rows()


def fit(width: float, height: float, batch: float, hires: bool, scale: float, tokens: float,
        negative: float) -> str:
    try:
        return check_fit(FitQuestion(int(width), int(height), int(batch), hires, float(scale), int(tokens),
                                     int(negative))).message
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
                    loras = gr.Textbox(label="LoRAs to bake into the engine (name:weight, comma-separated)",
                                       elem_id="trt_loras", info=lora_bake.TEXT_ENCODER_NOTE, scale=3)
                    lora_pick = gr.Dropdown(lora_bake.available_names(), label="Add a LoRA", elem_id="trt_lora_pick",
                                            scale=1)
                lora_pick.change(add_lora, [loras, lora_pick], [loras, lora_pick])
                lora_pick.focus(lambda: gr.update(choices=lora_bake.available_names()), None, lora_pick)
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
                    fn = gr.Number(75, label="negative tokens", precision=0)
                fit_button, fit_answer = gr.Button("Check"), gr.Markdown()
        gr.Markdown("### Engines")
        engines = gr.Dataframe(engine_rows, headers=ENGINE_COLUMNS, interactive=False, wrap=True)
        with gr.Row():
            engine_id = gr.Textbox(label="Engine id to delete", elem_id="trt_delete_id")
            delete_button, refresh_button = gr.Button("Delete engine"), gr.Button("Refresh")
        deleted = gr.Markdown()

        for component in [preset, *fields]:
            component.change(validate, [preset, *fields], check)
        build_button.click(build, [preset, loras, refit, controlnet, *fields], [result, job_id, engines]).then(
            None, _js="trtRefreshUnetList")
        cancel_button.click(cancel, job_id, result)
        delete_button.click(delete, engine_id, [deleted, engines]).then(None, _js="trtRefreshUnetList")
        refresh_button.click(lambda current: (engine_rows(), status_markdown(), refreshed_presets(current)),
                             preset, [engines, status, preset])
        fit_button.click(fit, [fw, fh, fb, fhr, fsc, ft, fn], fit_answer)
        ui.load(refreshed_presets, [], preset)
    return [(ui, "TensorRT", "tensorrt")]
