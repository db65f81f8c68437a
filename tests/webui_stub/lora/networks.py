"""Mirrors extensions-builtin/Lora/networks.py: the LoRA registry (``available_networks``), key mapping
(kohya diffusers-style names -> compvis layer names, with the WebUI's fallbacks), ``load_networks`` and
``network_apply_weights`` with its CPU backups and restore.

The stand-in's UNets keep diffusers module names, so kohya keys reach them through the WebUI's own fallback
(``lora_unet`` -> ``diffusion_model``, as for SDXL LoRAs). Left out: bundled embeddings, OFT/IA3/LoKr/GLoRA
module types, MultiheadAttention/QkvLinear merges (their backups and restore are kept), fp16 weight copies.
The layer forwards that ``lora_patches`` installs are here as in the WebUI (``network_Linear_forward``, ...).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any

import network
import network_hada
import network_lora
import torch
from modules import devices, paths, sd_hijack, shared

module_types = [network_lora.ModuleTypeLora(), network_hada.ModuleTypeHada()]

re_digits = re.compile(r"\d+")
re_x_proj = re.compile(r"(.*)_([qkv]_proj)$")
suffix_conversion = {
    "attentions": {},
    "resnets": {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0",
                "norm2": "out_layers_0", "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"},
}


def convert_diffusers_name_to_compvis(key: str, is_sd2: bool) -> str:
    def match(regex: str) -> list[Any] | None:
        r = re.match(regex, key)
        return [int(x) if re.match(re_digits, x) else x for x in r.groups()] if r else None

    if m := match(r"lora_unet_conv_in(.*)"):
        return f"diffusion_model_input_blocks_0_0{m[0]}"
    if m := match(r"lora_unet_conv_out(.*)"):
        return f"diffusion_model_out_2{m[0]}"
    if m := match(r"lora_unet_time_embedding_linear_(\d+)(.*)"):
        return f"diffusion_model_time_embed_{m[0] * 2 - 2}{m[1]}"
    if m := match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"):
        suffix = suffix_conversion.get(m[1], {}).get(m[3], m[3])
        return f"diffusion_model_input_blocks_{1 + m[0] * 3 + m[2]}_{1 if m[1] == 'attentions' else 0}_{suffix}"
    if m := match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)"):
        suffix = suffix_conversion.get(m[0], {}).get(m[2], m[2])
        return f"diffusion_model_middle_block_{1 if m[0] == 'attentions' else m[1] * 2}_{suffix}"
    if m := match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"):
        suffix = suffix_conversion.get(m[1], {}).get(m[3], m[3])
        return f"diffusion_model_output_blocks_{m[0] * 3 + m[2]}_{1 if m[1] == 'attentions' else 0}_{suffix}"
    if m := match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv"):
        return f"diffusion_model_input_blocks_{3 + m[0] * 3}_0_op"
    if m := match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv"):
        return f"diffusion_model_output_blocks_{2 + m[0] * 3}_{2 if m[0] > 0 else 1}_conv"
    if m := match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)"):
        if is_sd2:
            part = m[1].replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj").replace("self_attn", "attn")
            return f"model_transformer_resblocks_{m[0]}_{part}"
        return f"transformer_text_model_encoder_layers_{m[0]}_{m[1]}"
    return key


def assign_network_names_to_compvis_modules(sd_model: Any) -> None:
    """Layer name -> module for the text encoder (when it is a torch module) and the model (UNet)."""
    mapping = {}
    roots = [getattr(sd_model.cond_stage_model, "wrapped", sd_model.cond_stage_model), sd_model.model]
    for root in roots:
        if not isinstance(root, torch.nn.Module):
            continue  # the stand-in's text encoder is not one
        for name, module in root.named_modules():
            network_name = name.replace(".", "_")
            mapping[network_name] = module
            module.network_layer_name = network_name
    sd_model.network_layer_mapping = mapping


def load_network(name: str, network_on_disk: network.NetworkOnDisk) -> network.Network:
    import safetensors.torch

    net = network.Network(name, network_on_disk)
    net.mtime = os.path.getmtime(network_on_disk.filename)
    sd = safetensors.torch.load_file(network_on_disk.filename)
    if not hasattr(shared.sd_model, "network_layer_mapping"):
        assign_network_names_to_compvis_modules(shared.sd_model)
    layer_mapping = shared.sd_model.network_layer_mapping
    is_sd2 = "model_transformer_resblocks" in layer_mapping
    matched: dict[str, network.NetworkWeights] = {}
    failed = {}
    for key_network, weight in sd.items():
        key_without_parts, _, network_part = key_network.partition(".")
        key = convert_diffusers_name_to_compvis(key_without_parts, is_sd2)
        sd_module = layer_mapping.get(key)
        if sd_module is None and (m := re_x_proj.match(key)):
            sd_module = layer_mapping.get(m.group(1))
        if sd_module is None and "lora_unet" in key_without_parts:
            key = key_without_parts.replace("lora_unet", "diffusion_model")
            sd_module = layer_mapping.get(key)
        if sd_module is None:
            failed[key_network] = key
            continue
        if key not in matched:
            matched[key] = network.NetworkWeights(network_key=key_network, sd_key=key, w={}, sd_module=sd_module)
        matched[key].w[network_part] = weight
    for key, weights in matched.items():
        net_module = next((m for t in module_types if (m := t.create_module(net, weights)) is not None), None)
        if net_module is None:
            raise AssertionError(f"Could not find a module type that would accept those keys: {', '.join(weights.w)}")
        net.modules[key] = net_module
    if failed:
        logging.debug(f"Network {network_on_disk.filename} didn't match keys: {failed}")
    return net


def load_networks(names: list[str], te_multipliers: list[float] | None = None,
                  unet_multipliers: list[float] | None = None, dyn_dims: list[int | None] | None = None) -> None:
    already_loaded = {net.name: net for net in loaded_networks if net.name in names}
    loaded_networks.clear()
    networks_on_disk = [available_network_aliases.get(name) for name in names]
    if any(x is None for x in networks_on_disk):
        list_available_networks()
        networks_on_disk = [available_network_aliases.get(name) for name in names]
    failed_to_load = []
    for i, (network_on_disk, name) in enumerate(zip(networks_on_disk, names)):
        net = already_loaded.get(name)
        if network_on_disk is not None:
            if net is None:
                net = networks_in_memory.get(name)
            if net is None or os.path.getmtime(network_on_disk.filename) > net.mtime:
                net = load_network(name, network_on_disk)
                networks_in_memory.pop(name, None)
                networks_in_memory[name] = net
            net.mentioned_name = name
        if net is None:
            failed_to_load.append(name)
            continue
        net.te_multiplier = te_multipliers[i] if te_multipliers else 1.0
        net.unet_multiplier = unet_multipliers[i] if unet_multipliers else 1.0
        net.dyn_dim = dyn_dims[i] if dyn_dims else 1.0
        loaded_networks.append(net)
    if failed_to_load:
        sd_hijack.model_hijack.comments.append(f'Lora not found: {", ".join(failed_to_load)}')


def allowed_layer_without_weight(layer: torch.nn.Module) -> bool:
    return isinstance(layer, torch.nn.LayerNorm) and not layer.elementwise_affine


def store_weights_backup(weight: torch.Tensor | None) -> torch.Tensor | None:
    return None if weight is None else weight.to(devices.cpu, copy=True)


def restore_weights_backup(obj: torch.nn.Module, field: str, weight: torch.Tensor | None) -> None:
    if weight is None:
        setattr(obj, field, None)
        return
    getattr(obj, field).copy_(weight)


def network_restore_weights_from_backup(self: torch.nn.Module) -> None:
    """networks.py lines 391-408: an in-place ``copy_`` of each backup (no ``torch.no_grad`` of its own)."""
    weights_backup = getattr(self, "network_weights_backup", None)
    bias_backup = getattr(self, "network_bias_backup", None)
    if weights_backup is None and bias_backup is None:
        return
    if weights_backup is not None:
        if isinstance(self, torch.nn.MultiheadAttention):
            restore_weights_backup(self, "in_proj_weight", weights_backup[0])
            restore_weights_backup(self.out_proj, "weight", weights_backup[1])
        else:
            restore_weights_backup(self, "weight", weights_backup)
    if isinstance(self, torch.nn.MultiheadAttention):
        restore_weights_backup(self.out_proj, "bias", bias_backup)
    else:
        restore_weights_backup(self, "bias", bias_backup)


def network_apply_weights(self: torch.nn.Module) -> None:
    """networks.py lines 411-542: applies the currently selected set of networks to the weights of torch layer
    self; restores the original weights from the CPU backup first when another set was applied. Called by
    every patched layer forward, so after a job the layers keep that job's merge until a later forward sees
    another ``loaded_networks``."""
    network_layer_name = getattr(self, "network_layer_name", None)
    if network_layer_name is None:
        return
    current_names = getattr(self, "network_current_names", ())
    wanted_names = tuple((x.name, x.te_multiplier, x.unet_multiplier, x.dyn_dim) for x in loaded_networks)

    weights_backup = getattr(self, "network_weights_backup", None)
    if weights_backup is None and wanted_names != ():
        if current_names != () and not allowed_layer_without_weight(self):
            raise RuntimeError(f"{network_layer_name} - no backup weights found and current weights are not unchanged")
        if isinstance(self, torch.nn.MultiheadAttention):
            weights_backup = (store_weights_backup(self.in_proj_weight), store_weights_backup(self.out_proj.weight))
        else:
            weights_backup = store_weights_backup(self.weight)
        self.network_weights_backup = weights_backup

    bias_backup = getattr(self, "network_bias_backup", None)
    if bias_backup is None and wanted_names != ():
        if isinstance(self, torch.nn.MultiheadAttention) and self.out_proj.bias is not None:
            bias_backup = store_weights_backup(self.out_proj.bias)
        elif getattr(self, "bias", None) is not None:
            bias_backup = store_weights_backup(self.bias)
        else:
            bias_backup = None
        if bias_backup is not None and current_names != ():
            raise RuntimeError("no backup bias found and current bias are not unchanged")
        self.network_bias_backup = bias_backup

    if current_names != wanted_names:
        network_restore_weights_from_backup(self)
        for net in loaded_networks:
            module = net.modules.get(network_layer_name, None)
            if module is None or not hasattr(self, "weight"):
                continue  # the MultiheadAttention q/k/v/out merge is left out (no tiny UNet has one)
            try:
                with torch.no_grad():
                    weight, bias = self.weight, self.bias
                    updown, ex_bias = module.calc_updown(weight)
                    if len(weight.shape) == 4 and weight.shape[1] == 9:
                        updown = torch.nn.functional.pad(updown, (0, 0, 0, 0, 0, 5))  # inpainting UNet
                    self.weight.copy_((weight.to(dtype=updown.dtype) + updown).to(dtype=self.weight.dtype))
                    if ex_bias is not None and hasattr(self, "bias"):
                        if self.bias is None:
                            self.bias = torch.nn.Parameter(ex_bias).to(self.weight.dtype)
                        else:
                            self.bias.copy_((bias + ex_bias).to(dtype=self.bias.dtype))
            except RuntimeError as e:
                logging.debug(f"Network {net.name} layer {network_layer_name}: {e}")
                extra_network_lora.errors[net.name] = extra_network_lora.errors.get(net.name, 0) + 1
        self.network_current_names = wanted_names


def network_forward(org_module: torch.nn.Module, input: torch.Tensor, original_forward: Callable) -> torch.Tensor:
    """networks.py lines 545-569: the "old method" (``lora_functional``): the layer's own output plus each
    network's, after restoring the layer from its backup."""
    if len(loaded_networks) == 0:
        return original_forward(org_module, input)
    input = devices.cond_cast_unet(input)
    network_restore_weights_from_backup(org_module)
    network_reset_cached_weight(org_module)
    y = original_forward(org_module, input)
    network_layer_name = getattr(org_module, "network_layer_name", None)
    for lora in loaded_networks:
        module = lora.modules.get(network_layer_name, None)
        if module is not None:
            y = module.forward(input, y)
    return y


def network_reset_cached_weight(self: torch.nn.Module) -> None:
    self.network_current_names = ()
    self.network_weights_backup = None
    self.network_bias_backup = None


def _layer_forward(cls_name: str) -> Callable:
    """``network_<Class>_forward`` (networks.py lines 578-641): merge the loaded networks, then the class's
    original forward (``originals.<Class>_forward``); the functional mode instead for all but
    MultiheadAttention."""
    def forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        original = getattr(originals, f"{cls_name}_forward")
        if cls_name != "MultiheadAttention" and shared.opts.lora_functional:
            return network_forward(self, *args, original)
        network_apply_weights(self)
        return original(self, *args, **kwargs)

    forward.__name__ = forward.__qualname__ = f"network_{cls_name}_forward"
    return forward


def _layer_load_state_dict(cls_name: str) -> Callable:
    """``network_<Class>_load_state_dict``: new weights make the backups stale."""
    def load_state_dict(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        network_reset_cached_weight(self)
        return getattr(originals, f"{cls_name}_load_state_dict")(self, *args, **kwargs)

    load_state_dict.__name__ = load_state_dict.__qualname__ = f"network_{cls_name}_load_state_dict"
    return load_state_dict


network_Linear_forward = _layer_forward("Linear")
network_Linear_load_state_dict = _layer_load_state_dict("Linear")
network_Conv2d_forward = _layer_forward("Conv2d")
network_Conv2d_load_state_dict = _layer_load_state_dict("Conv2d")
network_GroupNorm_forward = _layer_forward("GroupNorm")
network_GroupNorm_load_state_dict = _layer_load_state_dict("GroupNorm")
network_LayerNorm_forward = _layer_forward("LayerNorm")
network_LayerNorm_load_state_dict = _layer_load_state_dict("LayerNorm")
network_MultiheadAttention_forward = _layer_forward("MultiheadAttention")
network_MultiheadAttention_load_state_dict = _layer_load_state_dict("MultiheadAttention")


def lora_dir() -> str:
    """``--lora-dir``; the WebUI's default is models/Lora."""
    return getattr(shared.cmd_opts, "lora_dir", None) or os.path.join(paths.models_path, "Lora")


def list_available_networks() -> None:
    available_networks.clear()
    available_network_aliases.clear()
    os.makedirs(lora_dir(), exist_ok=True)
    for root, _, files in os.walk(lora_dir()):
        for file in sorted(files):
            if os.path.splitext(file)[1].lower() not in (".pt", ".ckpt", ".safetensors"):
                continue
            name = os.path.splitext(file)[0]
            entry = network.NetworkOnDisk(name, os.path.join(root, file))
            available_networks[name] = entry
            available_network_aliases[name] = entry
            available_network_aliases[entry.alias] = entry


available_networks: dict[str, network.NetworkOnDisk] = {}
available_network_aliases: dict[str, network.NetworkOnDisk] = {}
loaded_networks: list[network.Network] = []
networks_in_memory: dict[str, network.Network] = {}
originals: Any = None
"""lora_patches.LoraPatches, set by lora_script at import: the layer classes' original methods."""
extra_network_lora: Any = None
"""extra_networks_lora.ExtraNetworkLora, set by lora_script's before_ui; its ``errors`` count merge failures."""

list_available_networks()
