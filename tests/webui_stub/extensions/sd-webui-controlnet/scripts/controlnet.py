"""Mirrors sd-webui-controlnet v1.1.455 scripts/controlnet.py's ``Script`` for hooking a job: always on,
``process`` (1226-1229) runs ``controlnet_main_entry``, which first restores the previous job's hook (860-862),
then makes a ``UnetHook`` and hooks the UNet with the job's units (1199-1202); ``postprocess`` puts the UNet's
forward back (1298). The stand-in skips the UI, unit
parsing, preprocessors and model loading: tests hand it ready ``ControlParams`` as ``p.controlnet_params``.
"""

import modules.scripts as scripts
from scripts.hook import UnetHook

from scripts import controlnet_version, hook  # noqa: F401  (the real file imports both, line 19)


class Script(scripts.Script):
    def __init__(self):
        self.latest_network = None

    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args, **kwargs):
        if self.latest_network is not None:
            self.latest_network.restore()
            self.latest_network = None
        params = getattr(p, "controlnet_params", None)
        if not params:
            return
        unet = p.sd_model.model.diffusion_model
        self.latest_network = UnetHook(lowvram=False)
        self.latest_network.hook(model=unet, sd_ldm=p.sd_model, control_params=params, process=p)

    def postprocess(self, p, processed, *args):
        if self.latest_network is not None:
            self.latest_network.restore()
            self.latest_network = None
