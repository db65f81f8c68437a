"""SD 2.x fp16 exports compute attention scores in fp32 (no overflow to inf, no black images).

ONNX Runtime on the CPU computes fp16 MatMuls in fp32 anyway, so it cannot show the overflow; these tests
check the precision the graph states (which a strongly typed TensorRT network keeps), that the results stay
the model's, and that TensorRT for RTX parses the upcast graph with fp32 softmax and builds it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from trt_lib.export.attention_upcast import upcast_attention_scores
from trt_lib.model.families import get_family
from trt_lib.model.profiles import Profile

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def softmax_precisions(path: Path) -> list[tuple[int, int, list[str]]]:
    """Per Softmax: the type of its input, of the score op's output, and the ops reading its output."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    producer = {out: n for n in model.graph.node for out in n.output}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rows = []
    for node in model.graph.node:
        if node.op_type == "Softmax":
            source = producer[node.input[0]]
            while source.op_type not in ("MatMul", "Einsum"):
                source = next(producer[i] for i in source.input if i in producer and producer[i].op_type != "Cast"
                              and producer[i].op_type != "Constant")
            readers = [f"{c.op_type}:{next((a.i for a in c.attribute if a.name == 'to'), '')}"
                       for c in consumers[node.output[0]]]
            rows.append((types[node.input[0]], types[source.output[0]], readers))
    return rows


def attention_count(unet: torch.nn.Module) -> int:
    return sum(1 for name, _ in unet.named_modules() if name.endswith(("attn1", "attn2")))


@pytest.mark.parametrize("name", ["sd2", "sd2-v", "sd2-inpaint"])
def test_sd2_fp16_exports_compute_attention_scores_in_fp32(name, tiny_unet, exported_onnx):
    rows = softmax_precisions(exported_onnx(name, torch.float16))
    assert len(rows) == attention_count(tiny_unet(name)) > 0
    assert all(row == (FLOAT, FLOAT, [f"Cast:{FLOAT16}"]) for row in rows), rows


@pytest.mark.parametrize("name,dtype", [("sd1", torch.float16), ("sdxl", torch.float16), ("sd2", torch.float32)])
def test_other_exports_keep_their_attention_precision(name, dtype, exported_onnx):
    want = FLOAT16 if dtype == torch.float16 else FLOAT
    rows = softmax_precisions(exported_onnx(name, dtype))
    assert rows and {row[:2] for row in rows} == {(want, want)}


class WebuiPlainAttention(torch.nn.Module):
    """The attention the export traces in the WebUI (``CrossAttention.forward`` as set by
    ``sd_hijack.undo_optimizations``, modules/hypernetworks/hypernetwork.py): einsum scores, scale, softmax."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(dim, dim, bias=False) for _ in range(3))

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:  # rearrange 'b n (h d) -> (b h) n d'
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, -1).permute(0, 2, 1, 3).reshape(b * self.heads, n, -1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q, k, v = (self.split_heads(t) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        sim = torch.einsum("b i d, b j d -> b i j", q, k) * self.scale
        out = torch.einsum("b i j, b j d -> b i d", sim.softmax(dim=-1), v)
        bh, n, d = out.shape  # rearrange '(b h) n d -> b n (h d)'
        return out.reshape(bh // self.heads, self.heads, n, d).permute(0, 2, 1, 3).reshape(bh // self.heads, n, -1)


def test_the_webuis_einsum_attention_is_upcast_and_gives_the_same_result(tmp_path):
    torch.manual_seed(0)
    module = WebuiPlainAttention().eval()
    x, context = torch.randn(2, 16, 32), torch.randn(2, 77, 32)
    path = tmp_path / "attention.onnx"
    torch.onnx.export(module.half(), (x.half(), context.half()), str(path), input_names=["x", "context"],
                      output_names=["out"], opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    assert upcast_attention_scores(model.graph) == 1
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "upcast.onnx"))
    assert softmax_precisions(tmp_path / "upcast.onnx") == [(FLOAT, FLOAT, [f"Cast:{FLOAT16}"])]

    feeds = {"x": x.half().numpy(), "context": context.half().numpy()}
    before, after = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
                     for p in (path, tmp_path / "upcast.onnx"))
    with torch.no_grad():
        want = module.float()(x, context).numpy()
    error = float(np.linalg.norm(after.astype(np.float32) - want) / np.linalg.norm(want))
    print(f"einsum attention, fp16 with fp32 scores vs PyTorch fp32: relative error {error:.2e}")
    assert after.dtype == np.float16 and np.isfinite(after).all() and error <= 1e-2
    assert np.allclose(after, before, atol=2e-3)
    assert upcast_attention_scores(model.graph) == 0, "a second pass finds nothing left in fp16"


def test_tensorrt_for_rtx_keeps_fp32_scores_and_builds(exported_onnx, tmp_path):
    trt = pytest.importorskip("tensorrt_rtx")
    from trt_lib.backends import get_backend

    path = exported_onnx("sd2", torch.float16)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(path)), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    softmaxes = [network.get_layer(i) for i in range(network.num_layers)
                 if network.get_layer(i).type == trt.LayerType.SOFTMAX]
    assert softmaxes and all(layer.get_input(0).dtype == trt.float32 for layer in softmaxes)
    shapes = get_family("sd2").engine_shapes(Profile.from_dict(
        {"batch": [1, 1, 2], "height": [64, 64, 128], "width": [64, 64, 128], "tokens": [75, 75, 150]}))
    report = get_backend("tensorrt_rtx").build(path, tmp_path / "sd2.engine", [shapes], compute_capability="8.9",
                                               cache_dir=tmp_path / "cache")
    assert (tmp_path / "sd2.engine").stat().st_size == report.engine_bytes > 0
