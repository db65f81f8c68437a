"""UNet → ONNX: the export itself, fp32 attention scores, ControlNet residual inputs, and the traced graphs kept
for the next checkpoint of the same kind."""
