"""TrtRunner's device resources without a GPU: fake tensorrt and cuda-python modules keep a ledger of every stream
and buffer, so opening and closing, and a failure at each step of opening, must leave nothing allocated."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from hiap.base.errors import HiapError
from hiap.runtime.base import TensorSpec
from hiap.runtime.trt_build import sha256_file, write_sidecar
from hiap.runtime.trt_runner import TrtRunner

ROOT = Path(__file__).resolve().parents[2]
TRT_VERSION, GPU = "10.3.0", "Fake GPU"
MEMORY_ALLOCATION = 2  # cudaErrorMemoryAllocation


@dataclass
class FakeCuda:
    """cuda-python's runtime binding as TrtRunner calls it; device memory is host bytes, and every call is logged."""

    fail: str = ""
    memory: dict[int, bytearray] = field(default_factory=dict)
    allocated: list[int] = field(default_factory=list)
    freed: list[int] = field(default_factory=list)
    streams: list[int] = field(default_factory=list)
    destroyed: list[int] = field(default_factory=list)
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def cudaGetDeviceProperties(self, device: int) -> tuple[int, object]:
        return 0, types.SimpleNamespace(name=GPU.encode() + b"\x00\x00")

    def cudaStreamCreate(self) -> tuple[int, int | None]:
        if self.fail == "stream":
            return MEMORY_ALLOCATION, None
        self.streams.append(0x51 + len(self.streams))
        return 0, self.streams[-1]

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        self.destroyed.append(stream)
        return (0,)

    def cudaMalloc(self, nbytes: int) -> tuple[int, int]:
        if self.fail == "malloc" and len(self.allocated) == 1:  # the second buffer: the first must be freed
            return MEMORY_ALLOCATION, 0
        ptr = 0x1000 * (len(self.allocated) + 1)
        self.allocated.append(ptr)
        self.memory[ptr] = bytearray(nbytes)
        return 0, ptr

    def cudaFree(self, ptr: int) -> tuple[int]:
        self.freed.append(ptr)
        self.memory.pop(ptr, None)
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> tuple[int]:
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.memory[dst][:] = ctypes.string_at(src, nbytes)
        else:
            ctypes.memmove(dst, bytes(self.memory[src]), nbytes)
        return (0,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        return (0,)


class FakeContext:
    """An execution context for a model that adds 1 to its (batch, 4) input."""

    def __init__(self, cuda: FakeCuda, fail: str) -> None:
        self.cuda, self.fail, self.addresses, self.batch = cuda, fail, {}, -1

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.batch = shape[0]
        return self.fail != "batch"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        """The output's shape as inferred from the input shape set (the engine itself leaves both axes open)."""
        return (self.batch, 4)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if self.fail == "bind" and name == "logits":  # the last tensor: both buffers exist by then
            raise RuntimeError("cannot bind logits")
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        x = np.frombuffer(bytes(self.cuda.memory[self.addresses["input"]]), np.float32)
        self.cuda.memory[self.addresses["logits"]][:] = (x + 1).tobytes()
        return True


class FakeEngine:
    TENSORS = (("input", (-1, 4), "input"), ("logits", (-1, -1), "output"))

    def __init__(self, cuda: FakeCuda, fail: str) -> None:
        self.cuda, self.fail, self.num_io_tensors = cuda, fail, len(self.TENSORS)

    def get_tensor_name(self, i: int) -> str:
        return self.TENSORS[i][0]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return dict((n, s) for n, s, _ in self.TENSORS)[name]

    def get_tensor_dtype(self, name: str) -> type:
        return np.float32

    def get_tensor_mode(self, name: str) -> str:
        return dict((n, m) for n, _, m in self.TENSORS)[name]

    def create_execution_context(self) -> FakeContext | None:
        return None if self.fail == "context" else FakeContext(self.cuda, self.fail)


def fake_tensorrt(cuda: FakeCuda) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = TRT_VERSION

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            return None if cuda.fail == "deserialise" else FakeEngine(cuda, cuda.fail)

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = lambda dtype: dtype
    return trt


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    path = tmp_path / "model.engine"
    path.write_bytes(b"serialised engine")
    write_sidecar(path, {"tensorrt_version": TRT_VERSION, "gpu": GPU, "precision": "fp16",
                         "engine_sha256": sha256_file(path)})  # fmt: skip
    return path


def install_fakes(monkeypatch: pytest.MonkeyPatch, fail: str = "") -> FakeCuda:
    """Put the fakes where the runner's lazy imports look (`tensorrt`, `cuda.bindings.runtime`)."""
    cuda = FakeCuda(fail)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cuda
    package = types.ModuleType("cuda")
    package.bindings = bindings
    for name, module in (("tensorrt", fake_tensorrt(cuda)), ("cuda", package), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", cuda)):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
    return cuda


def assert_all_released(cuda: FakeCuda) -> None:
    """Every buffer and stream created was freed, and none twice."""
    assert Counter(cuda.freed) == Counter(cuda.allocated) and len(set(cuda.freed)) == len(cuda.freed), cuda
    assert Counter(cuda.destroyed) == Counter(cuda.streams) and len(set(cuda.destroyed)) == len(cuda.destroyed), cuda
    assert cuda.memory == {}


def test_open_infer_close_frees_every_buffer_and_the_stream(engine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = install_fakes(monkeypatch)
    runner = TrtRunner(engine, batch=2)
    with runner:
        assert runner.inputs == [TensorSpec("input", (2, 4), "float32")]
        assert runner.outputs == [TensorSpec("logits", (2, 4), "float32")]
        assert runner.metadata["gpu"] == GPU and runner.describe()["precision"] == "fp16"
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        np.testing.assert_array_equal(runner.infer({"input": x})["logits"], x + 1)
        assert len(cuda.allocated) == 2 and len(cuda.streams) == 1 and not cuda.freed and not cuda.destroyed
    assert_all_released(cuda)
    runner.__exit__(None, None, None)  # closing again frees nothing twice
    assert_all_released(cuda)
    with runner:  # reopened: the same two tensors, two fresh buffers
        assert len(runner.inputs) == len(runner.outputs) == 1 and len(cuda.allocated) == 4
    assert_all_released(cuda)


@pytest.mark.parametrize(
    ("fail", "error", "message", "buffers", "streams"),
    [
        ("deserialise", HiapError, "TensorRT cannot deserialise", 0, 0),
        ("context", HiapError, "could not create an execution context", 0, 0),
        ("stream", HiapError, "CUDA call cudaStreamCreate failed with error 2", 0, 0),
        ("batch", HiapError, "does not accept batch 2", 0, 1),
        ("malloc", HiapError, r"CUDA call cudaMalloc failed with error 2\.", 1, 1),
        ("bind", RuntimeError, "cannot bind logits", 2, 1),
    ],
)
def test_a_failure_while_opening_frees_what_was_created(
    engine: Path, monkeypatch: pytest.MonkeyPatch, fail: str, error: type, message: str, buffers: int, streams: int
) -> None:
    cuda = install_fakes(monkeypatch, fail)
    runner = TrtRunner(engine, batch=2)
    with pytest.raises(error, match=message), runner:  # `with` skips __exit__ when __enter__ raises
        pytest.fail("the runner opened")
    # The failure came where intended: this much had been created, and all of it is gone.
    assert (len(cuda.allocated), len(cuda.streams)) == (buffers, streams)
    assert_all_released(cuda)
    runner.__exit__(None, None, None)  # harmless after a failed open
    assert_all_released(cuda)


# Runs with tensorrt and every cuda module unimportable, as on a host without them.
WITHOUT_TENSORRT = """
import importlib.abc, json, sys
class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorrt', 'cuda'):
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
import hiap.runtime.trt_env, hiap.runtime.trt_build, hiap.runtime.trt_runner
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cuda'))
try:
    hiap.runtime.trt_env.cudart()
except Exception as exc:
    cuda = f'{type(exc).__name__}: {exc}'
print(json.dumps({'loaded': loaded, 'tensorrt': hiap.runtime.trt_env.import_tensorrt(), 'cuda': cuda}))
"""


def test_the_tensorrt_modules_import_without_tensorrt_or_cuda() -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT_TENSORRT], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {
        "loaded": [],
        "tensorrt": None,
        "cuda": "HiapError: TensorRT runs need cuda-python for device memory: pip install 'hiap[jetson]' "
        "(cuda-python 12.x, for JetPack 6's CUDA 12; TensorRT itself comes from JetPack, so the venv needs "
        "--system-site-packages)",
    }


def test_trtexec_line_takes_the_batch_range_bench_builds_with() -> None:
    from hiap.runtime.trt_build import trtexec_command

    cmd = trtexec_command(Path("m.onnx"), Path("m.engine"), dynamic_chw=(3, 32, 32), max_batch=64)
    assert "--minShapes=input:1x3x32x32 --optShapes=input:1x3x32x32 --maxShapes=input:64x3x32x32" in cmd
    assert "--maxShapes" not in trtexec_command(Path("m.onnx"), Path("m.engine"))  # a fixed-batch model


def test_trtexec_line_for_jetpack_int8_and_old_tensorrt() -> None:
    from hiap.runtime.trt_build import JETPACK_TRTEXEC, trtexec_command

    cmd = trtexec_command(Path("m.onnx"), Path("m.engine"), layer_names=["/norm/LN"], int8=True)
    assert cmd.startswith(f"{JETPACK_TRTEXEC} --onnx=m.onnx") and "--int8" in cmd and "--fp16" in cmd
    assert "--layerPrecisions=/norm/LN:fp32" in cmd
    # Before TensorRT 10.1 layers are not named after the ONNX nodes: a pin by name would match nothing.
    old = trtexec_command(Path("m.onnx"), Path("m.engine"), layer_names=["/norm/LN"], names_are_layers=False)
    assert "--layerPrecisions" not in old and "--int8" not in old


def test_engine_builds_check_cuda_python_first_and_survive_a_corrupt_timing_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hiap.runtime.trt_build as trt_build

    def builder(*_: object) -> None:
        raise AssertionError("the build started before cuda-python was checked")

    monkeypatch.setattr(trt_build, "import_tensorrt", lambda: types.SimpleNamespace(Builder=builder))

    def no_cuda() -> None:
        raise HiapError("TensorRT runs need cuda-python")

    monkeypatch.setattr(trt_build, "cudart", no_cuda)
    with pytest.raises(HiapError, match="need cuda-python"):
        trt_build.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine")

    class Config:
        cache: bytes | None = None

        def create_timing_cache(self, blob: bytes) -> bytes:
            if blob:
                raise RuntimeError("bad timing cache")
            return blob

        def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

    corrupt = tmp_path / "timing.cache"
    corrupt.write_bytes(b"not a cache")
    config = Config()
    trt_build._load_timing_cache(config, corrupt)
    assert config.cache == b"" and "is unusable (RuntimeError); building without it" in capsys.readouterr().err


def test_an_int8_engine_needs_the_tensorrt_recipe() -> None:
    from hiap.devices.profile import load_profile
    from hiap.devices.runners import engine_build_settings

    nano = load_profile("jetson-orin-nano")
    ort_file = {"precision": "int8", "quantization": json.dumps({"activations": "u8"})}
    with pytest.raises(HiapError, match=r"quantized for ONNX Runtime .*--precision int8 --target jetson-orin-nano"):
        engine_build_settings(nano, ort_file)
    trt_file = {"precision": "int8", "quantization": json.dumps({"activations": "s8"})}
    assert engine_build_settings(nano, trt_file)["int8"] and not engine_build_settings(nano, {})["int8"]
