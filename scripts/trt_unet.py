"""Entry point the WebUI loads: registers the TensorRT extension's callbacks and its always-on script.

Thin on purpose: the work is in ``trt_webui`` (WebUI adapter) and ``trt_lib`` (library). Both are imported
here, at load time, because the extension folder is on ``sys.path`` only while this file is imported.
"""

from modules import script_callbacks, scripts

from trt_webui import api, controlnet, job_check, settings, tab
from trt_webui.extension import EXT

script_callbacks.on_ui_settings(settings.register)
script_callbacks.on_list_unets(EXT.list_unets)
script_callbacks.on_model_loaded(lambda _model: EXT.refresh_unets())  # before the WebUI re-applies sd_unet
script_callbacks.on_ui_tabs(tab.on_ui_tabs)
script_callbacks.on_app_started(api.on_app_started)


class TensorRTScript(scripts.Script):
    """Always on: checks before sampling that an engine covers the job, and restores it after a fallback."""

    def title(self) -> str:
        return "TensorRT"

    def show(self, is_img2img: bool) -> object:
        return scripts.AlwaysVisible

    def before_process(self, p, *args) -> None:
        note = controlnet.install()  # before ControlNet's ``process`` hooks the UNet for this job
        if note:
            print(f"[TensorRT] {note}")

    def process_before_every_sampling(self, p, *args, **kwargs) -> None:
        job_check.before_sampling(p, kwargs.get("c"), kwargs.get("uc"))

    def postprocess(self, p, processed, *args) -> None:
        job_check.after_job(p)
