"""Mirrors modules/extra_networks.py: ``<name:args>`` tags are cut out of prompts and each registered
network's ``activate`` runs (with an empty list when the prompt does not name it), errors displayed and
swallowed."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from modules import errors

re_extra_net = re.compile(r"<(\w+):([^>]+)>")


class ExtraNetworkParams:
    def __init__(self, items: list[str] | None = None) -> None:
        self.items = items or []
        self.positional = [x for x in self.items if "=" not in x]
        self.named = dict(x.split("=", 1) for x in self.items if "=" in x)


class ExtraNetwork:
    def __init__(self, name: str) -> None:
        self.name = name

    def activate(self, p: Any, params_list: list[ExtraNetworkParams]) -> None:
        raise NotImplementedError

    def deactivate(self, p: Any) -> None:
        raise NotImplementedError


extra_network_registry: dict[str, ExtraNetwork] = {}


def register_extra_network(extra_network: ExtraNetwork) -> None:
    extra_network_registry[extra_network.name] = extra_network


def register_default_extra_networks() -> None:
    """Lines 26-28; the WebUI calls it at start (initialize.py ``initialize_rest``)."""
    from modules.extra_networks_hypernet import ExtraNetworkHypernet

    register_extra_network(ExtraNetworkHypernet())


def parse_prompt(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    res: dict[str, list[ExtraNetworkParams]] = defaultdict(list)

    def found(m: re.Match) -> str:
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, found, prompt), res


def parse_prompts(prompts: list[str]) -> tuple[list[str], dict[str, list[ExtraNetworkParams]]]:
    res, extra_data = [], None
    for prompt in prompts:
        updated_prompt, parsed_extra_data = parse_prompt(prompt)
        if extra_data is None:
            extra_data = parsed_extra_data
        res.append(updated_prompt)
    return res, extra_data or {}


def activate(p: Any, extra_network_data: dict[str, list[ExtraNetworkParams]]) -> None:
    activated = []
    for name, args in extra_network_data.items():
        extra_network = extra_network_registry.get(name)
        if extra_network is None:
            continue
        try:
            extra_network.activate(p, args)
            activated.append(extra_network)
        except Exception as e:
            errors.display(e, f"activating extra network {name} with arguments {args}")
    for name, extra_network in extra_network_registry.items():
        if extra_network not in activated:
            try:
                extra_network.activate(p, [])
            except Exception as e:
                errors.display(e, f"activating extra network {name}")


def deactivate(p: Any, extra_network_data: dict[str, list[ExtraNetworkParams]]) -> None:
    for name in extra_network_data:
        extra_network = extra_network_registry.get(name)
        if extra_network is None:
            continue
        try:
            extra_network.deactivate(p)
        except Exception as e:
            errors.display(e, f"deactivating extra network {name}")
