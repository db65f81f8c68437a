"""Mirrors modules/prompt_parser.py's conditioning structures and how the sampler reads them per step.

Prompt editing (``[a:b:0.5]``) is left out: each prompt has one schedule entry. ``AND`` composition is kept
(each sub-prompt is its own cond row), as are per-batch padding and ``reconstruct_*_batch``.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import torch

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    """A list of prompts with the image size, as the WebUI passes them to the text encoder."""

    def __init__(self, prompts: list[str], is_negative_prompt: bool = False, width: int | None = None,
                 height: int | None = None, copy_from: Any = None) -> None:
        super().__init__()
        self.extend(prompts)
        self.is_negative_prompt = is_negative_prompt
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules: list[ScheduledPromptConditioning], weight: float = 1.0) -> None:
        self.schedules: list[ScheduledPromptConditioning] = schedules
        self.weight: float = weight


class MulticondLearnedConditioning:
    def __init__(self, shape: tuple, batch: list[list[ComposableScheduledPromptConditioning]]) -> None:
        self.shape: tuple = shape
        self.batch: list[list[ComposableScheduledPromptConditioning]] = batch


class DictWithShape(dict):
    def __init__(self, x: dict, shape: tuple | None = None) -> None:
        super().__init__()
        self.update(x)

    @property
    def shape(self) -> torch.Size:
        return self["crossattn"].shape


def _split(cond: Any, n: int) -> list[Any]:
    if isinstance(cond, dict):
        return [{k: v[i] for k, v in cond.items()} for i in range(n)]
    return [cond[i] for i in range(n)]


def get_learned_conditioning(model: Any, prompts: list[str], steps: int, hires_steps: int | None = None,
                             use_old_scheduling: bool = False) -> list[list[ScheduledPromptConditioning]]:
    """One schedule per prompt; prompts of one batch are encoded together (same number of chunks)."""
    conds = model.get_learned_conditioning(list(prompts))
    return [[ScheduledPromptConditioning(steps, c)] for c in _split(conds, len(prompts))]


def get_multicond_prompt_list(prompts: list[str]) -> tuple[list[list[tuple[int, float]]], list[str]]:
    indexes, flat = [], []
    for prompt in prompts:
        indexes.append([])
        for sub in prompt.split(" AND "):
            indexes[-1].append((len(flat), 1.0))
            flat.append(sub.strip())
    return indexes, flat


def get_multicond_learned_conditioning(model: Any, prompts: list[str], steps: int, hires_steps: int | None = None,
                                       use_old_scheduling: bool = False) -> MulticondLearnedConditioning:
    res_indexes, prompt_flat_list = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, prompt_flat_list, steps, hires_steps, use_old_scheduling)
    res = [[ComposableScheduledPromptConditioning(learned[i], weight) for i, weight in indexes]
           for indexes in res_indexes]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=res)


def _pick(schedules: list[ScheduledPromptConditioning], current_step: int) -> Any:
    for entry in schedules:
        if current_step <= entry.end_at_step:
            return entry.cond
    return schedules[0].cond


def stack_conds(tensors: list[torch.Tensor]) -> torch.Tensor:
    token_count = max(x.shape[0] for x in tensors)
    for i in range(len(tensors)):
        if tensors[i].shape[0] != token_count:
            last_vector_repeated = tensors[i][-1:].repeat([token_count - tensors[i].shape[0], 1])
            tensors[i] = torch.vstack([tensors[i], last_vector_repeated])
    return torch.stack(tensors)


def reconstruct_cond_batch(c: list[list[ScheduledPromptConditioning]], current_step: int) -> Any:
    picked = [_pick(schedules, current_step) for schedules in c]
    if isinstance(picked[0], dict):
        return DictWithShape({k: torch.stack([p[k] for p in picked]) for k in picked[0]})
    return torch.stack(picked)


def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step: int) -> tuple[list, Any]:
    tensors, conds_list = [], []
    for composable_prompts in c.batch:
        conds_for_batch = []
        for composable_prompt in composable_prompts:
            conds_for_batch.append((len(tensors), composable_prompt.weight))
            tensors.append(_pick(composable_prompt.schedules, current_step))
        conds_list.append(conds_for_batch)
    if isinstance(tensors[0], dict):
        return conds_list, DictWithShape({k: stack_conds([x[k] for x in tensors]) for k in tensors[0]})
    return conds_list, stack_conds(tensors)
