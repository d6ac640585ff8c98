"""Stage 4, deployment: export (ONNX, TorchScript), timing, and the AdaDSR depth sweep."""
