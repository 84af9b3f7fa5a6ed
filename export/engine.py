"""`hiap export --format engine`: the TensorRT engine of an exported folder, built here when TensorRT is installed;
otherwise the error says how to build it on the device (engines run only where they are built)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiap.base.errors import HiapError
from hiap.base.jsonfile import parse_json
from hiap.base.precision import FP16, INT8
from hiap.devices.profile import DeviceProfile
from hiap.devices.runners import engine_build_settings, engine_key, timing_cache_for
from hiap.export.device_check import layernorm_node_names
from hiap.runtime import trt_build, trt_env


def export_engine(
    out_dir: Path, metadata: dict[str, str], profile: DeviceProfile, dynamic_batch: bool
) -> dict[str, Any]:
    """Build out_dir/model.engine from out_dir/model.onnx with the profile's build settings; returns the engine's
    sidecar (TensorRT version, GPU, precision). Without TensorRT: a HiapError with the trtexec command."""
    onnx_path, engine_path = out_dir / "model.onnx", out_dir / "model.engine"
    build = engine_build_settings(profile, metadata)
    trt = trt_env.import_tensorrt()  # looked up at call time (tests stand a fake TensorRT in)
    if trt is None:
        chw = tuple(parse_json(metadata["input_size"], "metadata 'input_size'")) if dynamic_batch else None
        # TensorRT names its layers after the ONNX nodes from 10.1 on: before that, trtexec cannot pin them by name.
        oldest = profile.software.oldest_tensorrt()
        by_name = oldest is None or oldest >= (10, 1)
        cmd = trt_build.trtexec_command(onnx_path, engine_path, build[FP16], build["layernorm_fp32"],
                              layernorm_node_names(onnx_path), chw, build["workspace_mb"], build["max_batch"],
                              build[INT8], by_name)  # fmt: skip
        raise HiapError(
            f"TensorRT is not installed here and engines only run where they are built ({trt_env.NOT_VALIDATED}); "
            f"{out_dir} holds model.onnx, plan.json and golden.npz. On the device run "
            f"'hiap bench {onnx_path} --device {profile.name}' (builds and caches the engine) or '{cmd}'."
        )
    cache = timing_cache_for(onnx_path, engine_key(trt))
    return trt_build.build_engine(onnx_path, engine_path, **build, timing_cache=cache, metadata=metadata)
