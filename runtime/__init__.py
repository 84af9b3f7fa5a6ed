"""Runtime: ONNX Runtime and TensorRT runners behind one contract, and the latency/fidelity/accuracy harnesses.

Everything here imports with the base install only (numpy, onnxruntime, typer, rich, pyyaml, pillow): no torch,
no timm, no onnx tools, so it runs on a board that only has `pip install hiap`. It knows nothing of device profiles
(devices/ maps a profile onto a runner) and imports only the base from hiap (docs/architecture.md).
"""
