"""Devices: measure ONNX models (local ONNX Runtime, device server, latency tables). Torch-free."""
