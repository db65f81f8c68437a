"""Issue 15: a second checkpoint of the same kind reuses the first one's traced graph and writes only its weights.

Two copies of the loaded checkpoint with other UNet weights each get an engine: the second export keeps no new
graph (the first one's was reused), its ONNX graph file equals the first one's byte for byte (only the weights
differ), and its weights are exactly the second checkpoint's, read through the weight map.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from live_checkpoints import checkpoint_copy
from live_lora import weights_differing
from live_webui import STATIC_64, Webui, built, engine_dir

pytestmark = pytest.mark.live


def _graphs(webui: Webui) -> set[str]:
    return {p.name for p in (engine_dir(webui) / "cache" / "graphs").glob("*.graph.pb")}


def test_a_second_checkpoint_writes_its_weights_into_the_first_ones_graph(webui: Webui) -> None:
    with checkpoint_copy(webui, "reuse_a", seed=7) as (first, _):
        with built(webui, STATIC_64) as a:
            kept = _graphs(webui)
            assert kept, "the first export kept no traced graph"
            with checkpoint_copy(webui, "reuse_b", seed=8) as (second, second_path):
                with built(webui, STATIC_64) as b:
                    assert b["checkpoint"] == second and a["checkpoint"] == first
                    assert _graphs(webui) == kept, "the second export traced its own graph"
                    graph_a, graph_b = (engine_dir(webui) / e["onnx_file"] for e in (a, b))
                    assert graph_a != graph_b and graph_a.read_bytes() == graph_b.read_bytes()
                    assert Path(f"{graph_a}.data").read_bytes() != Path(f"{graph_b}.data").read_bytes()
                    wrong = weights_differing(webui, b, second_path, {})
                    assert not wrong, f"{len(wrong)} weights are not the second checkpoint's: {list(wrong)[:5]}"
