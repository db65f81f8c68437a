"""The README's main command, ``python -m trt_lib demo``: its table says what built, what ran and why, in
the tab's words, and the engine folder it names is kept."""

from __future__ import annotations

import re

import pytest

from trt_lib.__main__ import main
from trt_lib.backends.trt10 import gpu_capability
from trt_lib.store.engine_store import EngineStore

pytest.importorskip("tensorrt_rtx")


def test_the_demo_table_says_what_built_and_what_ran_and_keeps_the_engine(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    print(out)
    facts = {re.split(r"\s{2,}", line.strip())[0]: line for line in out.splitlines()}
    no_gpu = gpu_capability() is None
    assert "TensorRT for RTX" in facts["built"] and f"compute capability {gpu_capability() or '8.9'}" in facts["built"]
    assert ("no GPU here" if no_gpu else "this machine's GPU") in facts["why that one"]
    assert "ONNX Runtime (reference, " in facts["ran"] and "TensorRT" not in facts["ran"]
    assert ("no CUDA GPU here" if no_gpu else "the WebUI runs the engine") in facts["why"]
    assert "64-128x64-128 px, batch size 1-2 images, 75-150 prompt tokens" in facts["profile"]
    for old in ("ctx rows", "sm 8.9", " b1", "rows,", "store "):
        assert old not in out, old

    folder = facts["engine folder (kept)"].split()[3]
    (entry,) = EngineStore(tmp_path / "demo").entries()
    assert folder == str((tmp_path / "demo").resolve()) and (tmp_path / "demo" / entry.engine_file).is_file()
    errors = [float(m) for m in re.findall(r"  (\d\.\d\de-\d\d)  ", out)]
    assert len(errors) == 3 and all(e < 5e-2 for e in errors), errors  # fp16 export vs the fp32 PyTorch UNet
