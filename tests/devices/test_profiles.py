from pathlib import Path

import pytest
import yaml

from hiap.base.errors import HiapError
from hiap.devices.host import detect_host, profile_mismatch
from hiap.devices.profile import all_profiles, load_profile, profiles_dir, read_profile, version_in_range

REQUIRED = {"jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "rpi5", "rpi4", "x86-cpu", "cuda-gpu"}


def test_every_shipped_profile_loads_and_names_are_unique() -> None:
    profiles = all_profiles()
    assert set(profiles) >= REQUIRED
    names = [a for p in profiles.values() for a in (p.name, *p.aliases)]
    assert len(names) == len(set(names))
    assert load_profile("jetson-orin").name == "jetson-agx-orin"
    for p in profiles.values():
        assert p.budgets.latency_p99_ms >= p.budgets.latency_p50_ms > 0
        assert (p.runtime == "trt") == (p.precision == "fp16")
        assert p.max_opset >= 17 or p.name.endswith("jp5")


def _write(tmp_path: Path, edit: dict) -> Path:
    body = yaml.safe_load((profiles_dir() / "x86-cpu.yaml").read_text())
    for dotted, value in edit.items():
        node = body
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"budgets.latency_p50": 5}, "Did you mean 'latency_p50_ms'"),
        ({"budgets.latency_p50_ms": "fast"}, "'budgets.latency_p50_ms' must be a number"),
        ({"budgets.latency_p99_ms": 1}, "is below latency_p50_ms"),
        ({"runtime": "tflite"}, "'runtime' must be 'ort', 'openvino' or 'trt'"),
        ({"ort": KeyError}, "'ort' section is required"),
        ({"precision": "fp16"}, "must be 'fp32' with runtime 'ort'"),
        ({"software.onnxruntime": "1.17"}, "expected a comparison"),
        ({"budgets.min_top1_agreement": 2}, "fraction"),
        ({"batch": True}, "'batch' must be an integer"),
        ({"schema_version": 9}, "this hiap reads version 1"),
    ],
)
def test_bad_profiles_name_the_key(tmp_path: Path, edit: dict, message: str) -> None:
    with pytest.raises(HiapError, match=message.replace("(", r"\(")):
        read_profile(_write(tmp_path, edit))


def test_unknown_device_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(HiapError, match="Did you mean 'rpi5'"):
        load_profile("rpi6")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(HiapError, match="not valid YAML at line"):
        load_profile(str(bad))


def test_version_ranges() -> None:
    assert version_in_range("10.3.0.30", ">=10.3,<10.4")
    assert not version_in_range("10.4.0", ">=10.3,<10.4")
    assert not version_in_range("8.5.2", ">=10.3,<10.4")
    assert version_in_range("1.32.0", ">=1.16")
    assert version_in_range("10.3.1", "==10.3")


def _fake_root(tmp_path: Path, model: str = "", tegra: str = "", cpuinfo: str = "") -> Path:
    for rel, text in (("proc/device-tree/model", model + "\x00"), ("etc/nv_tegra_release", tegra),
                      ("proc/cpuinfo", cpuinfo)):  # fmt: skip
        if text.strip("\x00"):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text(text)
    return tmp_path


def test_host_detection_jetson_pi_and_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HIAP_EMULATION", raising=False)
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    jetson = detect_host(_fake_root(tmp_path / "j", "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
                                    "# R36 (release), REVISION: 4.3, GCID: 38968081"))  # fmt: skip
    assert (jetson.board, jetson.l4t) == ("jetson", "36.4.3")
    assert profile_mismatch(load_profile("jetson-orin-nano"), jetson) == ""
    assert "L4T R35" in profile_mismatch(load_profile("jetson-orin-nano-jp5"), jetson)
    # JetPack 6.0 (L4T 36.3) has TensorRT 8.6: its own profile, not the 10.3 one.
    assert "L4T R36.3" in profile_mismatch(load_profile("jetson-orin-nano-jp60"), jetson)
    jp60 = detect_host(_fake_root(tmp_path / "j60", "NVIDIA Jetson Orin Nano Developer Kit",
                                  "# R36 (release), REVISION: 3.0, GCID: 36191598"))  # fmt: skip
    assert jp60.l4t == "36.3.0" and profile_mismatch(load_profile("jetson-orin-nano-jp60"), jp60) == ""
    assert "is for L4T R36.4 but this Jetson runs R36.3.0" in profile_mismatch(load_profile("jetson-orin-nano"), jp60)
    from hiap.devices.host import guess_profile
    from hiap.devices.profile import all_profiles

    assert guess_profile(jp60, all_profiles().values()).name == "jetson-orin-nano-jp60"
    assert guess_profile(jetson, all_profiles().values()).name == "jetson-orin-nano"
    assert "AGX Orin" in profile_mismatch(load_profile("jetson-agx-orin"), jetson)
    assert "is for x86_64" in profile_mismatch(load_profile("x86-cpu"), jetson)
    pi = detect_host(_fake_root(tmp_path / "p", "Raspberry Pi 5 Model B Rev 1.0"))
    assert pi.board == "raspberry-pi" and profile_mismatch(load_profile("rpi5"), pi) == ""
    assert "Raspberry Pi 4" in profile_mismatch(load_profile("rpi4"), pi)
    emulated = detect_host(_fake_root(tmp_path / "q", cpuinfo="vendor_id\t: GenuineIntel\nmodel name\t: Xeon\n"))
    assert emulated.emulated and "emulated" in profile_mismatch(load_profile("rpi5"), emulated)


def test_host_records_the_cpu_features_that_decide_kernels(tmp_path: Path) -> None:
    amx = "model name\t: Xeon\nflags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8\n"
    assert detect_host(_fake_root(tmp_path / "x", cpuinfo=amx)).cpu_flags == [
        "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"]  # fmt: skip
    a76 = "Features\t: fp asimd evtstrm aes pmull crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc asimddp\n"
    assert detect_host(_fake_root(tmp_path / "a", cpuinfo=a76)).cpu_flags == ["asimddp", "fphp", "asimdhp"]
    assert detect_host(_fake_root(tmp_path / "n", cpuinfo="")).cpu_flags == []


def test_every_problem_of_a_profile_is_reported_in_one_error(tmp_path: Path) -> None:
    edit = {"runtime": "tflite", "budgets.latency_p50_ms": "fast", "protocol.warmup": KeyError}
    with pytest.raises(HiapError) as err:
        read_profile(_write(tmp_path, edit))
    message = str(err.value)
    assert "\n" not in message
    problems = message.split(": ", 1)[1].split("; ")
    assert len(problems) == 3, message
    assert any("'runtime' must be 'ort', 'openvino' or 'trt', got 'tflite'" in p for p in problems)
    assert any("'budgets.latency_p50_ms' must be a number" in p for p in problems)
    assert any("'protocol.warmup' is missing" in p for p in problems)


def test_fallback_profiles_are_guessed_last() -> None:
    from hiap.devices.host import Host, guess_profile

    profiles = all_profiles()
    gpu_box = Host(arch="x86_64", board="nvidia-gpu", nvidia_gpu=True)
    assert guess_profile(gpu_box, profiles.values()).name == "x86-cpu"  # the CPU profile on a GPU box
    arm_gpu_box = Host(arch="aarch64", board="nvidia-gpu", nvidia_gpu=True)
    assert guess_profile(arm_gpu_box, profiles.values()).name == "cuda-gpu"
    assert guess_profile(Host(arch="riscv64", board="generic"), profiles.values()) is None


def test_int8_precisions_need_their_fidelity_limits() -> None:
    import copy

    from hiap.devices.profile import profiles_dir, validate

    body = yaml.safe_load((profiles_dir() / "x86-cpu.yaml").read_text())
    assert validate(copy.deepcopy(body), "x86").budgets.fidelity_limits("int8") == (0.5, 1.0)
    assert validate(copy.deepcopy(body), "x86").budgets.fidelity_limits("fp32") == (1e-4, 1.0)
    no_limits = copy.deepcopy(body)
    del no_limits["budgets"]["int8_fidelity_atol"]
    with pytest.raises(HiapError, match=r"'budgets' needs \['int8_fidelity_atol'\] when precisions lists an INT8"):
        validate(no_limits, "x86")
    assert validate(copy.deepcopy(body), "x86").budgets.fidelity_limits("bf16") == (0.1, 1.0)
    assert validate(copy.deepcopy(body), "x86").budgets.fidelity_limits("fp16") == (0.02, 1.0)
    no_bf16 = copy.deepcopy(body)
    del no_bf16["budgets"]["bf16_min_top1_agreement"]
    with pytest.raises(HiapError, match=r"'budgets' needs \['bf16_min_top1_agreement'\] when precisions lists bf16"):
        validate(no_bf16, "x86")
    with pytest.raises(HiapError, match=r"'precisions' must be a non-empty list"):
        validate(copy.deepcopy(body) | {"precisions": []}, "x86")
    for key, value in (("latency_p50_ms", float("nan")), ("max_acc_drop", float("nan")), ("max_acc_drop", -1.0),
                       ("fidelity_atol", float("inf"))):  # fmt: skip
        bad = copy.deepcopy(body)
        bad["budgets"][key] = value
        with pytest.raises(HiapError, match=rf"budgets.{key}' must be a finite number"):
            validate(bad, "x86")
    odd = copy.deepcopy(body) | {"precisions": ["fp32", "int4"]}
    with pytest.raises(HiapError, match=r"'precisions' has \['int4'\]"):
        validate(odd, "x86")
    fp32_only = {k: v for k, v in copy.deepcopy(body).items() if k != "precisions"}
    assert validate(fp32_only, "x86").precisions == ("fp32",)
    ov = copy.deepcopy(body) | {"runtime": "openvino", "openvino": {"threads": 2}}
    assert validate(ov, "x86").openvino.threads == 2
    del ov["ort"]
    with pytest.raises(HiapError, match="'ort' section is required with runtime 'openvino' too"):
        validate(ov, "x86")
