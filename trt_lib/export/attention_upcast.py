"""Attention scores in fp32 inside an fp16 ONNX graph, so that Q·Kᵀ cannot overflow.

SD 2.x UNets produce attention logits beyond fp16's 65504 for some prompts and sizes: in fp16 the scores
become inf, softmax turns them into NaN, and the picture comes out black. The WebUI avoids it with its
"upcast cross attention" setting, and Stability's own code computes the scores in fp32; but the plain
attention the export traces (with the WebUI's attention optimisations off) has no upcast. This pass puts it
back into the exported graph, whatever attention code was traced (``einsum``, ``bmm``/``baddbmm``, SDPA):
for every Softmax it finds the MatMul or Einsum that makes the scores, computes everything from there to the
Softmax in fp32 (Casts on the edges that enter) and casts the probabilities back to fp16 for the product
with V. A strongly typed TensorRT network keeps exactly these precisions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

SCORE_OPS = frozenset({"MatMul", "Einsum"})
"""Ops that multiply Q by Kᵀ."""
BETWEEN_OPS = frozenset({"Mul", "Div", "Add", "Sub"})
"""Ops allowed between the scores and the Softmax (scale, bias); anything else leaves an attention as it is."""
_MAX_DEPTH = 4


def upcast_attention_scores(graph: onnx.GraphProto) -> int:
    """Compute every attention's scores and softmax in fp32 (in place); returns how many attentions changed.

    For graphs whose activations are fp16 (an fp32 graph needs no upcast). Only Softmax nodes fed, within a
    few elementwise ops, by a MatMul or Einsum are changed; every input entering that region is a float
    activation or constant (these ops take nothing else), so each gets a Cast to fp32.
    """
    import onnx

    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    before: dict[int, list[onnx.NodeProto]] = {}
    after: dict[int, onnx.NodeProto] = {}
    retyped: set[str] = set()
    for s_index in [i for i, n in enumerate(nodes) if n.op_type == "Softmax"]:
        region = _score_region(s_index, nodes, producer)
        entering = [(i, k, name) for i in sorted(region) for k, name in enumerate(nodes[i].input)
                    if name and producer.get(name) not in region]
        if not region or all(_is_cast_to_fp32(nodes, producer.get(name)) for _, _, name in entering):
            continue  # not attention, or already upcast
        for i, k, name in entering:
            cast = f"{name}__fp32_{i}_{k}"
            before.setdefault(i, []).append(
                onnx.helper.make_node("Cast", [name], [cast], to=onnx.TensorProto.FLOAT, name=cast))
            nodes[i].input[k] = cast
        probabilities = nodes[s_index].output[0]
        nodes[s_index].output[0] = f"{probabilities}__fp32"
        retyped.update(out for i in region for out in nodes[i].output)  # now fp32
        after[s_index] = onnx.helper.make_node("Cast", [nodes[s_index].output[0]], [probabilities],
                                               to=onnx.TensorProto.FLOAT16, name=f"{probabilities}__fp16")
    if not after:
        return 0
    ordered = []
    for i, node in enumerate(nodes):
        ordered += [*before.get(i, []), node, *([after[i]] if i in after else [])]
    del graph.node[:]
    graph.node.extend(ordered)
    kept = [v for v in graph.value_info if v.name not in retyped]  # loaders infer their types again
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return len(after)


def _score_region(softmax: int, nodes: list[onnx.NodeProto], producer: dict[str, int]) -> set[int]:
    """Indices of the Softmax and every node on a path from the scores' MatMul/Einsum to it; empty when the
    Softmax is not fed by one within a few elementwise ops."""
    region: set[int] = set()

    def reaches_scores(i: int, depth: int) -> bool:
        node = nodes[i]
        if node.op_type in SCORE_OPS:
            found = True
        elif depth < _MAX_DEPTH and (i == softmax or node.op_type in BETWEEN_OPS):
            found = False
            for name in node.input:
                if name in producer and reaches_scores(producer[name], depth + 1):
                    found = True
        else:
            found = False
        if found:
            region.add(i)
        return found

    reaches_scores(softmax, 0)
    return region


def _is_cast_to_fp32(nodes: list[onnx.NodeProto], index: int | None) -> bool:
    import onnx

    return index is not None and nodes[index].op_type == "Cast" and any(
        a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in nodes[index].attribute)
