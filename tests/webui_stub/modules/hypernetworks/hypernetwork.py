"""Mirrors modules/hypernetworks/hypernetwork.py where a job meets it: ``load_hypernetworks`` (lines 337-356)
fills ``shared.loaded_hypernetworks`` with the named hypernetworks of ``shared.hypernetworks``, reusing loaded
ones, and nothing empties it after the job; the WebUI's attention forwards then apply them to the context
(``apply_hypernetworks``). Left out: the networks' layers (a stand-in keeps its name and multiplier)."""

from __future__ import annotations

from modules import shared


class Hypernetwork:
    def __init__(self, name: str) -> None:
        self.name = name
        self.multiplier = 1.0

    def set_multiplier(self, multiplier: float) -> None:
        self.multiplier = multiplier


def load_hypernetwork(name: str) -> Hypernetwork | None:
    return Hypernetwork(name) if name in shared.hypernetworks else None  # errors.report for a bad file


def load_hypernetworks(names: list[str], multipliers: list[float] | None = None) -> None:
    already_loaded = {h.name: h for h in shared.loaded_hypernetworks if h.name in names}
    shared.loaded_hypernetworks.clear()
    for i, name in enumerate(names):
        hypernetwork = already_loaded.get(name) or load_hypernetwork(name)
        if hypernetwork is None:
            continue
        hypernetwork.set_multiplier(multipliers[i] if multipliers else 1.0)
        shared.loaded_hypernetworks.append(hypernetwork)
