"""Running engines in place of the PyTorch UNet: the runner interface, the reference runtime, CUDA graphs,
which engine serves a call, a checkpoint's engine session, LoRA refit and the engine check."""
