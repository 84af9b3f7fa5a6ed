"""Export: plan from frozen gates, compact network, ONNX/TensorRT writers and parity checks (issue 3; not built yet)."""
