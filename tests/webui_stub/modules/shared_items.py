"""Mirrors modules/shared_items.py: the sd_unet dropdown's items and its refresh, and the ``Shared`` module
class that makes ``shared.sd_model`` a property."""

import sys
import types


def sd_unet_items() -> list[str]:
    import modules.sd_unet

    return ["Automatic"] + [x.label for x in modules.sd_unet.unet_options] + ["None"]


def refresh_unet_list() -> None:
    import modules.sd_unet

    modules.sd_unet.list_unets()


class Shared(types.ModuleType):
    """``shared.sd_model`` reads and writes ``sd_models.model_data`` as in the WebUI (shared_items.py lines
    163-182): reading it loads a checkpoint if none was loaded yet (``get_sd_model``)."""

    @property
    def sd_model(self):
        import modules.sd_models

        return modules.sd_models.model_data.get_sd_model()

    @sd_model.setter
    def sd_model(self, value) -> None:
        import modules.sd_models

        modules.sd_models.model_data.set_sd_model(value)


def install_shared_class(module_name: str) -> None:
    sys.modules[module_name].__class__ = Shared
