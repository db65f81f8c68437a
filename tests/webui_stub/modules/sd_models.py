"""Mirrors modules/sd_models.py (with sd_models_xl.py and the ldm/sgm model wrappers) where the extension
meets it: ``CheckpointInfo`` names, ``model_data``/``shared.sd_model``, ``reload_model_weights`` with its
``apply_unet("None")`` before a switch, a new model for another config or the weights loaded in place and
``apply_unet()`` after for the same config, ``SkipWritingToConfig``, and a loaded model object whose
``.model.diffusion_model`` is the UNet, called the way ldm's ``DiffusionWrapper`` and sgm's
``OpenAIWrapper`` call it.

A stand-in checkpoint is a name plus a function that makes its UNet (``add_checkpoint``); prompts are
encoded by a deterministic stand-in text encoder that counts one token per word.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from modules import devices, errors, hashes, paths, script_callbacks, sd_hijack, sd_unet, shared

TOKENS_PER_CHUNK = 75
CONTEXT_PER_CHUNK = 77


class CheckpointInfo:
    """Names and hashes of a checkpoint file as the WebUI derives them (``name`` relative to the models
    folder): ``CheckpointInfo.__init__``/``register``/``calculate_shorthash``, sd_models.py lines 56-128.

    ``sha256`` comes only from the hash cache (None for a file not hashed since it last changed), so the
    title has no ``[shorthash]`` until ``calculate_shorthash`` runs, which loading a checkpoint does
    (lines 333 and 411) unless ``--no-hashing``. ``hash`` is the old hash of 64 KiB of the file (line 90,
    ``model_hash``, lines 203-215)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.filename = os.path.join(paths.models_path, "Stable-diffusion", name)
        self.name_for_extra = os.path.splitext(os.path.basename(self.filename))[0]
        self.model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        self.hash = model_hash(self.filename)
        self.sha256 = hashes.sha256_from_cache(self.filename, f"checkpoint/{name}")
        self.shorthash = self.sha256[0:10] if self.sha256 else None
        self.title = name if self.shorthash is None else f"{name} [{self.shorthash}]"
        short = self.name_for_extra
        self.short_title = short if self.shorthash is None else f"{short} [{self.shorthash}]"
        self.ids = [self.hash, self.model_name, self.title, name, self.name_for_extra, f"{name} [{self.hash}]"]
        if self.shorthash:
            self.ids += [self.shorthash, self.sha256, f"{self.name} [{self.shorthash}]",
                         f"{self.name_for_extra} [{self.shorthash}]"]
        self.metadata: dict[str, Any] = {}

    def register(self) -> None:
        checkpoints_list[self.title] = self
        for alias in self.ids:
            checkpoint_aliases[alias] = self

    def calculate_shorthash(self) -> str | None:
        self.sha256 = hashes.sha256(self.filename, f"checkpoint/{self.name}")
        if self.sha256 is None:
            return None
        shorthash = self.sha256[0:10]
        if self.shorthash == self.sha256[0:10]:
            return self.shorthash
        self.shorthash = shorthash
        if self.shorthash not in self.ids:
            self.ids += [self.shorthash, self.sha256, f"{self.name} [{self.shorthash}]",
                         f"{self.name_for_extra} [{self.shorthash}]"]
        old_title = self.title
        self.title = f"{self.name} [{self.shorthash}]"
        self.short_title = f"{self.name_for_extra} [{self.shorthash}]"
        checkpoints_list.pop(old_title, None)  # replace_key (lines 38-53) keeps the order; unused here
        self.register()
        return self.shorthash


def model_hash(filename: str) -> str:
    """old hash that only looks at a small part of the file and is prone to collisions (lines 203-215)"""
    try:
        with open(filename, "rb") as file:
            m = hashlib.sha256()
            file.seek(0x100000)
            m.update(file.read(0x10000))
            return m.hexdigest()[0:8]
    except FileNotFoundError:
        return "NOFILE"


@dataclass(frozen=True)
class CheckpointSpec:
    """The stand-in's checkpoint "file": how to make its UNet and what kind of model it is."""

    make_unet: Callable[[], torch.nn.Module]
    context_dim: int
    adm_dim: int | None = None
    in_channels: int = 4
    parameterization: str = "eps"


checkpoints_list: dict[str, CheckpointInfo] = {}
checkpoint_aliases: dict[str, CheckpointInfo] = {}
_specs: dict[str, CheckpointSpec] = {}


def add_checkpoint(name: str, spec: CheckpointSpec, content: bytes | None = None) -> CheckpointInfo:
    """The stand-in for a checkpoint file found in the models folder (``list_models``): a small real file
    (``content``, by default its name) so that the WebUI's hashing runs on it; adding a name again replaces
    the file, as copying another checkpoint over it would."""
    filename = os.path.join(paths.models_path, "Stable-diffusion", name)
    os.makedirs(os.path.dirname(filename), exist_ok=True)
    before = os.stat(filename).st_mtime_ns if os.path.exists(filename) else None
    with open(filename, "wb") as f:
        f.write(name.encode() if content is None else content)
    if before is not None:  # a copy made later: its mtime is newer even within the clock's resolution
        os.utime(filename, ns=(before + 10**9, before + 10**9))
    for title, old in list(checkpoints_list.items()):
        if old.filename == filename:
            del checkpoints_list[title]
    info = CheckpointInfo(name)
    info.register()
    _specs[info.filename] = spec
    return info


def select_checkpoint() -> CheckpointInfo:
    checkpoint_info = checkpoint_aliases.get(shared.opts.sd_model_checkpoint, None)
    if checkpoint_info is not None:
        return checkpoint_info
    if not checkpoints_list:
        raise FileNotFoundError("No checkpoints found.")
    return next(iter(checkpoints_list.values()))


def get_closet_checkpoint_match(search_string: str) -> CheckpointInfo | None:
    if not search_string:
        return None
    info = checkpoint_aliases.get(search_string)
    if info is not None:
        return info
    found = sorted([i for i in checkpoints_list.values() if search_string in i.title], key=lambda x: len(x.title))
    return found[0] if found else None


class TextEncoder:
    """Deterministic stand-in for CLIP: one token per word, 75-token chunks of 77 rows, padded within a batch
    to the longest prompt with empty-prompt chunks, as ``FrozenCLIPEmbedderWithCustomWords`` does."""

    def __init__(self, context_dim: int, adm_dim: int | None) -> None:
        self.context_dim = context_dim
        self.adm_dim = adm_dim

    @staticmethod
    def token_count(text: str) -> int:
        return len(text.split())

    def prompt_lengths(self, text: str) -> tuple[int, int]:
        count = self.token_count(text)
        return count, max(1, math.ceil(count / TOKENS_PER_CHUNK)) * TOKENS_PER_CHUNK

    def _chunk(self, text: str, index: int) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(f"{text}|{index}".encode()).digest()[:8], "little")
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(CONTEXT_PER_CHUNK, self.context_dim, generator=gen)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        chunks = max(max(1, math.ceil(self.token_count(p) / TOKENS_PER_CHUNK)) for p in prompts)
        rows = []
        for p in prompts:
            own = max(1, math.ceil(self.token_count(p) / TOKENS_PER_CHUNK))
            rows.append(torch.cat([self._chunk(p, i) for i in range(own)]
                                  + [self._chunk("", 0)] * (chunks - own)))
        return torch.stack(rows).to(devices.dtype_unet)

    def pooled(self, prompts: list[str]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(len(p) * 7919 + 1) for p in prompts]
        return torch.stack([torch.randn(self.adm_dim, generator=g) for g in gens]).to(devices.dtype_unet)


class DiffusionWrapper(torch.nn.Module):
    """ldm's ``DiffusionWrapper`` / sgm's ``OpenAIWrapper``: holds the UNet and calls it."""

    def __init__(self, diffusion_model: torch.nn.Module, conditioning_key: str, sgm: bool) -> None:
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = conditioning_key
        self.sgm = sgm

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        if self.sgm:  # OpenAIWrapper: concat (already added for inpainting), context and y as keywords
            return self.diffusion_model(x, timesteps=t, context=cond.get("crossattn"), y=cond.get("vector"))
        cc = torch.cat(cond["c_crossattn"], 1)
        if self.conditioning_key == "hybrid":
            xc = torch.cat([x] + cond["c_concat"], dim=1)
            return self.diffusion_model(xc, t, context=cc)
        return self.diffusion_model(x, t, context=cc)


class SdModel(torch.nn.Module):
    """The loaded model object (``shared.sd_model``): LatentDiffusion for SD 1/2, DiffusionEngine for SDXL."""

    def __init__(self, info: CheckpointInfo, spec: CheckpointSpec) -> None:
        super().__init__()
        unet = spec.make_unet()
        self.is_sdxl = spec.adm_dim is not None
        self.is_sdxl_inpaint = self.is_sdxl and spec.in_channels == 9
        self.is_sd2 = not self.is_sdxl and spec.context_dim == 1024
        self.is_sd1 = not self.is_sdxl and not self.is_sd2
        self.is_ssd = False
        key = "hybrid" if spec.in_channels == 9 and not self.is_sdxl else "crossattn"
        self.model = DiffusionWrapper(unet, key, self.is_sdxl)
        self.parameterization = spec.parameterization
        self.cond_stage_key = "txt"
        self.cond_stage_model = TextEncoder(spec.context_dim, spec.adm_dim)
        self.latent_channels = 4
        self.lowvram = False
        self.used_config = used_config(spec)
        self.sd_checkpoint_info = info
        self.sd_model_checkpoint = info.filename
        self.sd_model_hash = info.shorthash
        self.cond_stage_model_empty_prompt = self.cond_stage_model.encode([""])

    def get_learned_conditioning(self, prompts: list[str]) -> torch.Tensor | dict[str, torch.Tensor]:
        crossattn = self.cond_stage_model.encode(list(prompts))
        if not self.is_sdxl:
            return crossattn
        return {"crossattn": crossattn, "vector": self.cond_stage_model.pooled(list(prompts))}

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        if self.is_sdxl_inpaint:  # sd_models_xl.apply_model adds the inpainting channels
            x = torch.cat([x] + cond["c_concat"], dim=1)
        return self.model(x, t, cond)

    @contextlib.contextmanager
    def ema_scope(self) -> Iterator[None]:
        yield


class SdModelData:
    def __init__(self) -> None:
        self.sd_model: SdModel | None = None
        self.loaded_sd_models: list[SdModel] = []
        self.was_loaded_at_least_once = False
        self.lock = threading.Lock()

    def get_sd_model(self) -> SdModel | None:
        """What ``shared.sd_model`` reads (sd_models.py lines 683-701): the first access loads the selected
        checkpoint, so reading it before the WebUI has loaded one loads it there and then."""
        if self.was_loaded_at_least_once:
            return self.sd_model
        if self.sd_model is None:
            with self.lock:
                if self.sd_model is not None or self.was_loaded_at_least_once:
                    return self.sd_model
                try:
                    load_model()
                except Exception as e:
                    errors.display(e, "loading stable diffusion model", full_traceback=True)
                    self.sd_model = None
        return self.sd_model

    def set_sd_model(self, v: SdModel | None) -> None:
        self.sd_model = v
        if v in self.loaded_sd_models:
            self.loaded_sd_models.remove(v)
        if v is not None:
            self.loaded_sd_models.insert(0, v)


model_data = SdModelData()


class SkipWritingToConfig:
    """sd_models.py lines 350-362: loads inside it (a hires checkpoint, the refiner) leave the
    ``sd_model_checkpoint`` setting alone, so the next job loads the user's checkpoint again."""

    skip = False

    def __enter__(self) -> SkipWritingToConfig:
        self.previous = SkipWritingToConfig.skip
        SkipWritingToConfig.skip = True
        return self

    def __exit__(self, *exc: object) -> None:
        SkipWritingToConfig.skip = self.previous


def used_config(spec: CheckpointSpec) -> tuple:
    """What ``sd_models_config.find_checkpoint_config`` tells apart: checkpoints of one config share a model
    object (their weights are loaded into it in place)."""
    return spec.context_dim, spec.adm_dim, spec.in_channels, spec.parameterization


def load_model_weights(sd_model: SdModel, checkpoint_info: CheckpointInfo) -> None:
    """sd_models.py lines 410-489: the checkpoint's weights into the existing model, in place
    (``load_state_dict``, which the Lora extension's patch sees: it drops the layers' LoRA backups)."""
    if not SkipWritingToConfig.skip:
        shared.opts.data["sd_model_checkpoint"] = checkpoint_info.title
    state = _specs[checkpoint_info.filename].make_unet().state_dict()
    sd_model.model.diffusion_model.load_state_dict(state)
    sd_model.sd_model_hash = checkpoint_info.shorthash
    sd_model.sd_model_checkpoint = checkpoint_info.filename
    sd_model.sd_checkpoint_info = checkpoint_info


def load_model(checkpoint_info: CheckpointInfo | None = None) -> SdModel:
    checkpoint_info = checkpoint_info or select_checkpoint()
    checkpoint_info.calculate_shorthash()  # get_checkpoint_state_dict and load_model_weights, lines 333/411
    sd_model = SdModel(checkpoint_info, _specs[checkpoint_info.filename])
    if not SkipWritingToConfig.skip:
        shared.opts.data["sd_model_checkpoint"] = checkpoint_info.title
    sd_hijack.model_hijack.hijack(sd_model)
    sd_model.to(devices.device)
    model_data.set_sd_model(sd_model)
    model_data.was_loaded_at_least_once = True
    script_callbacks.model_loaded_callback(sd_model)
    return sd_model


def reload_model_weights(sd_model: SdModel | None = None, info: CheckpointInfo | None = None,
                         forced_reload: bool = False) -> SdModel:
    """sd_models.py lines 940-1002 with one model kept (``sd_checkpoints_limit`` 1, the default): the engine
    is taken off (``apply_unet("None")``) and the model sent to the CPU; a checkpoint of another config gets a
    new model (``load_model``, and no ``apply_unet`` after it), one of the same config is loaded into the
    model in place, which goes back to the device, and ``apply_unet()`` then applies the sd_unet setting for
    the new checkpoint (moving its UNet to the CPU again when an engine option is chosen)."""
    checkpoint_info = info or select_checkpoint()
    sd_model = sd_model or model_data.sd_model
    if sd_model is not None and sd_model.sd_model_checkpoint == checkpoint_info.filename and not forced_reload:
        return sd_model
    if sd_model is not None:
        sd_unet.apply_unet("None")
        sd_model.to(devices.cpu)
        sd_hijack.model_hijack.undo_hijack(sd_model)
    if sd_model is None or used_config(_specs[checkpoint_info.filename]) != sd_model.used_config:
        load_model(checkpoint_info)
        return model_data.sd_model
    try:
        load_model_weights(sd_model, checkpoint_info)
    finally:
        sd_hijack.model_hijack.hijack(sd_model)
        if not sd_model.lowvram:
            sd_model.to(devices.device)
        script_callbacks.model_loaded_callback(sd_model)
    model_data.set_sd_model(sd_model)
    sd_unet.apply_unet()
    return sd_model


def apply_token_merging(sd_model: Any, token_merging_ratio: float) -> None:
    pass
