"""Mirrors extensions-builtin/Lora/scripts/lora_script.py (v1.10.1, lines 1-37 and the ``lora_functional``
setting at 47-49): importing it patches the layer classes (``networks.originals =
lora_patches.LoraPatches()``, so that every layer merges the loaded networks in its own forward), names the
layers on each model load, registers the ``lora`` extra network before the UI is made, and undoes the
patches when scripts are unloaded."""

from __future__ import annotations

import extra_networks_lora
import lora_patches
import networks
from modules import extra_networks, script_callbacks, shared


def unload() -> None:
    networks.originals.undo()


def before_ui() -> None:
    networks.extra_network_lora = extra_networks_lora.ExtraNetworkLora()
    extra_networks.register_extra_network(networks.extra_network_lora)


networks.originals = lora_patches.LoraPatches()

script_callbacks.on_model_loaded(networks.assign_network_names_to_compvis_modules)
script_callbacks.on_script_unloaded(unload)
script_callbacks.on_before_ui(before_ui)

shared.opts.add_option("lora_functional", shared.OptionInfo(
    False, "Lora/Networks: use old method that takes longer when you have multiple Loras active and produces "
    "same results as kohya-ss/sd-webui-additional-networks extension"))
