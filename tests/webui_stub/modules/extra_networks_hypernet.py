"""Mirrors modules/extra_networks_hypernet.py: ``<hypernet:name:multiplier>`` (and the ``sd_hypernetwork``
setting) loads hypernetworks for the job; ``deactivate`` does nothing, so they stay loaded after it."""

from __future__ import annotations

from typing import Any

from modules import extra_networks
from modules.hypernetworks import hypernetwork


class ExtraNetworkHypernet(extra_networks.ExtraNetwork):
    def __init__(self) -> None:
        super().__init__("hypernet")

    def activate(self, p: Any, params_list: list[extra_networks.ExtraNetworkParams]) -> None:
        names = [params.items[0] for params in params_list]
        multipliers = [float(params.items[1]) if len(params.items) > 1 else 1.0 for params in params_list]
        hypernetwork.load_hypernetworks(names, multipliers)

    def deactivate(self, p: Any) -> None:
        pass
