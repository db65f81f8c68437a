"""trt_lib: export Stable Diffusion UNets to ONNX, build TensorRT engines with shape profiles, keep them in a
store, and run them in place of the PyTorch UNet. Imports and is tested without the WebUI and without a GPU.

Modules, in the order data flows:

- :mod:`trt_lib.families` — model families (SD 1.x, SD 2.x, SDXL, ...) read from ``models/families/*.json``
- :mod:`trt_lib.profiles` — shape profiles (batch, width, height, prompt tokens) and their validation
- :mod:`trt_lib.job_shapes` — every UNet call shape a WebUI job produces
- :mod:`trt_lib.export` — UNet → ONNX, with a parity check against PyTorch
- :mod:`trt_lib.backends` — ONNX → engine with TensorRT or TensorRT for RTX; the real runtime
- :mod:`trt_lib.store` — engine files and their manifest
- :mod:`trt_lib.pipeline` — export + build + record, the entry point for building
- :mod:`trt_lib.matching` — which engine and profile serve a call, or why none does
- :mod:`trt_lib.unet_session` — runs UNet calls on a checkpoint's engines
- :mod:`trt_lib.onnx_runtime` — the reference runtime: an engine's ONNX on ONNX Runtime (a user choice)

Heavy dependencies (onnx, onnxruntime, TensorRT) are imported only where used, so a WebUI whose install
of them failed still starts.
"""

__version__ = "0.3.0"
