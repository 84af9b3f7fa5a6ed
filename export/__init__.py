"""Export: plan from frozen gates, compact network, ONNX/TensorRT writers and parity checks, on the core and runtime."""
