"""Runtime: ONNX Runtime and TensorRT runners behind one interface, latency harnesses (issue 4; not built yet)."""
