"""trt_lib: export Stable Diffusion UNets to ONNX, build TensorRT engines with shape profiles, keep them in a
store, and run them in place of the PyTorch UNet. Imports and is tested without the WebUI and without a GPU.

Packages, in the order data flows:

- :mod:`trt_lib.model` — model families (``models/families/*.json``), shape profiles, a WebUI job's call shapes,
  random-weight UNets for tests and benchmarks
- :mod:`trt_lib.export` — UNet → ONNX (:mod:`~trt_lib.export.onnx_export`), fp32 attention scores, ControlNet
  residual inputs, traced graphs kept for the next checkpoint
- :mod:`trt_lib.backends` — ONNX → engine with TensorRT or TensorRT for RTX (in a child process); the real runtime
- :mod:`trt_lib.store` — engine files, their manifest and names
- :mod:`trt_lib.jobs` — the build queue (progress, cancel) and the export + build + record pipeline
- :mod:`trt_lib.engines` — running engines: the runner interface, which engine serves a call, a checkpoint's
  session, the reference runtime (ONNX Runtime, a user choice), CUDA graphs, LoRA refit, the engine check

Beside them: ``errors``, ``install_plan`` (what install.py installs), ``table`` and ``__main__`` (the demo).

Heavy dependencies (onnx, onnxruntime, TensorRT) are imported only where used, so a WebUI whose install
of them failed still starts.
"""

__version__ = "0.3.0"
