"""Mirrors modules/shared.py (with the parts of shared_options.py and shared_state.py the extension reads):
``opts`` with the WebUI's own settings, ``cmd_opts`` (shared_cmd_options.py's), ``demo``, ``state``,
``sd_model``."""

from modules import devices, options, shared_cmd_options, shared_items
from modules.options import OptionHTML, OptionInfo, options_section  # noqa: F401 - re-exported as in the WebUI

cmd_opts = shared_cmd_options.cmd_opts  # shared.py:14
demo = None  # shared.py:23; webui() sets it to the UI's Blocks, the stand-in builds none
device = devices.device


def _builtin_options() -> dict[str, OptionInfo]:
    """The WebUI settings the extension and the stand-in's sampling read, with their real defaults."""
    sd = options_section(("sd", "Stable Diffusion", "sd"), {
        "sd_model_checkpoint": OptionInfo(None, "Stable Diffusion checkpoint"),
        "sd_unet": OptionInfo("Automatic", "SD Unet", None, lambda: {"choices": shared_items.sd_unet_items()},
                              refresh=shared_items.refresh_unet_list).info(
            "choose Unet model: Automatic = use one with same filename as checkpoint; None = use Unet from "
            "checkpoint"),
    })
    optimizations = options_section(("optimizations", "Optimizations", "sd"), {
        "cross_attention_optimization": OptionInfo("Automatic", "Cross attention optimization"),
        "s_min_uncond": OptionInfo(0.0, "Negative Guidance minimum sigma", infotext="NGMS"),
        "s_min_uncond_all": OptionInfo(False, "Negative Guidance minimum sigma all steps", infotext="NGMS all steps"),
        "pad_cond_uncond": OptionInfo(False, "Pad prompt/negative prompt", infotext="Pad conds"),
        "pad_cond_uncond_v0": OptionInfo(False, "Pad prompt/negative prompt (v0)", infotext="Pad conds v0"),
        "persistent_cond_cache": OptionInfo(True, "Persistent cond cache"),
        "batch_cond_uncond": OptionInfo(True, "Batch cond/uncond"),
    })
    sampler_params = options_section(("sampler-params", "Sampler parameters", "sd"), {
        "skip_early_cond": OptionInfo(0.0, "Ignore negative prompt during early sampling", infotext="Skip Early CFG"),
    })
    ui = options_section(("ui", "User interface", "ui"), {
        "quicksettings_list": OptionInfo(["sd_model_checkpoint"], "Quicksettings list"),
    })
    return {**sd, **optimizations, **sampler_params, **ui}


opts = options.Options(_builtin_options(), set())


class State:
    """Mirrors modules/shared_state.State: the flags the sampler checks between steps."""

    def __init__(self) -> None:
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.job = ""
        self.job_count = 0
        self.sampling_step = 0
        self.sampling_steps = 0

    def begin(self, job: str = "(unknown)") -> None:
        self.interrupted = self.skipped = self.stopping_generation = False
        self.job = job
        self.job_count = -1

    def end(self) -> None:
        self.job = ""
        self.job_count = 0

    def interrupt(self) -> None:
        self.interrupted = True


state = State()
hypernetworks: dict[str, str] = {}  # shared.py:31: name -> file
loaded_hypernetworks: list = []  # shared.py:33

shared_items.install_shared_class(__name__)
