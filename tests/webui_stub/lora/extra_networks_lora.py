"""Mirrors extensions-builtin/Lora/extra_networks_lora.py: ``<lora:name:te[:unet[:dyn]]>`` (and ``te=``,
``unet=``, ``dyn=``) become one ``networks.load_networks`` call per batch (processing.py line 961 activates
extra networks for each batch, line 1437 again for a hires pass with other prompts; line 1133 deactivates
once after the job). The ``sd_lora`` "add network to prompt" setting and the infotext hashes are left out."""

from __future__ import annotations

from typing import Any

import networks
from modules import extra_networks


class ExtraNetworkLora(extra_networks.ExtraNetwork):
    def __init__(self) -> None:
        super().__init__("lora")
        self.errors: dict[str, int] = {}
        """Mapping of network names to the number of errors the network had during operation."""

    def activate(self, p: Any, params_list: list[extra_networks.ExtraNetworkParams]) -> None:
        self.errors.clear()
        names, te_multipliers, unet_multipliers, dyn_dims = [], [], [], []
        for params in params_list:
            assert params.items
            names.append(params.positional[0])
            te_multiplier = float(params.positional[1]) if len(params.positional) > 1 else 1.0
            te_multiplier = float(params.named.get("te", te_multiplier))
            unet_multiplier = float(params.positional[2]) if len(params.positional) > 2 else te_multiplier
            unet_multiplier = float(params.named.get("unet", unet_multiplier))
            dyn_dim = int(params.positional[3]) if len(params.positional) > 3 else None
            dyn_dim = int(params.named["dyn"]) if "dyn" in params.named else dyn_dim
            te_multipliers.append(te_multiplier)
            unet_multipliers.append(unet_multiplier)
            dyn_dims.append(dyn_dim)
        networks.load_networks(names, te_multipliers, unet_multipliers, dyn_dims)

    def deactivate(self, p: Any) -> None:
        """Only reports merge errors: ``networks.loaded_networks`` and the merged layer weights stay as this job
        left them until a later forward sees another set (extra_networks_lora.py lines 63-67)."""
        if self.errors:
            p.comment("Networks with errors: " + ", ".join(f"{k} ({v})" for k, v in self.errors.items()))
            self.errors.clear()
