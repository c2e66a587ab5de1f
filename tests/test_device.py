"""One device and dtype decision (zhlora.models.device.decide) for every command that runs a model.

No GPU here: CUDA's presence is faked at `cuda_capabilities`, the one place that asks torch, and
each command is stopped right after its decision to show it went through `decide` with auto.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zhlora.cli import main
from zhlora.errors import ZhloraError
from zhlora.models import device as devices

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "zh_instruct_sample.jsonl"
GEC = Path(__file__).parent / "assets" / "gec_data" / "eval5.tsv"
AMPERE, TURING = (8, 0), (7, 5)


@pytest.fixture(autouse=True)
def fresh_warnings():
    devices._warned.clear()


def fake_gpus(monkeypatch, *caps):
    monkeypatch.setattr(devices, "cuda_capabilities", lambda: list(caps))


def test_auto_is_cuda_when_present_and_the_cpu_otherwise(monkeypatch):
    fake_gpus(monkeypatch)
    assert devices.decide("auto", "auto") == (torch.device("cpu"), torch.float32)
    assert devices.decide(None, None) == (torch.device("cpu"), torch.float32)
    fake_gpus(monkeypatch, AMPERE)
    assert devices.decide("auto", "auto") == (torch.device("cuda", 0), torch.bfloat16)
    assert devices.decide("cpu", "auto") == (torch.device("cpu"), torch.float32)
    fake_gpus(monkeypatch, TURING)  # no native bf16: fp16
    assert devices.decide("auto", "auto") == (torch.device("cuda", 0), torch.float16)
    fake_gpus(monkeypatch, TURING, AMPERE)
    assert devices.decide("cuda:1", "auto") == (torch.device("cuda", 1), torch.bfloat16)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun: each process its own GPU
    assert devices.decide("auto", "auto") == (torch.device("cuda", 1), torch.bfloat16)


def test_half_precision_on_the_cpu_runs_but_warns_once(monkeypatch, capsys):
    fake_gpus(monkeypatch)
    assert devices.decide("auto", "bf16") == (torch.device("cpu"), torch.bfloat16)
    assert devices.decide("cpu", "float16")[1] == torch.float16
    devices.decide("cpu", "bf16")
    err = capsys.readouterr().err
    assert err.count("bfloat16 on the CPU runs, but slowly") == 1 and "float16 on the CPU" in err
    assert devices.decide("cpu", torch.float32)[1] == torch.float32
    assert capsys.readouterr().err == ""
    fake_gpus(monkeypatch, TURING)
    assert devices.decide("cuda", "bf16")[1] == torch.bfloat16
    assert "no native bfloat16" in capsys.readouterr().err


@pytest.mark.parametrize("device,gpus,msg", [
    ("cuda", (), "no CUDA GPU is visible"), ("cuda:0", (), "no CUDA GPU is visible"),
    ("cuda:2", (AMPERE,), "torch sees 1 GPU.s., cuda:0 to cuda:0"), ("mps", (), "unknown device"),
    ("cuda:x", (AMPERE,), "unknown device")])
def test_a_device_that_is_not_there_gets_a_message(monkeypatch, device, gpus, msg):
    fake_gpus(monkeypatch, *gpus)
    with pytest.raises(ZhloraError, match=msg):
        devices.decide(device, "auto")
    with pytest.raises(ZhloraError, match="unknown dtype 'fp8'"):
        devices.decide("cpu", "fp8")


class Decided(ZhloraError):
    pass


def stop_at_decision(monkeypatch, calls):
    """Fake an old GPU, record each decision and stop the command right after the first."""
    real = devices.decide

    def spy(device="auto", dtype="auto"):
        dev, td = real(device, dtype)
        calls.append((device, dtype, dev, td))
        raise Decided(f"decided {dev} {td}")

    fake_gpus(monkeypatch, TURING)
    monkeypatch.setattr(devices, "decide", spy)


def command_lines(base, adapter, tmp):
    inp = tmp / "in.txt"
    inp.write_text("你好\n", encoding="utf-8")
    ad = ["--adapter", str(adapter)]
    return {
        "train": ["train", f"model={base}", f"data={DATA}", f"output_dir={tmp / 'run'}", "max_samples=4",
                  "report_to=none"],
        "chat": ["chat", "--model", str(base), *ad],
        "predict": ["predict", "--model", str(base), "--adapter", str(adapter), "--input", str(inp),
                    "--output", str(tmp / "out.jsonl")],
        "serve": ["serve", "--model", str(base), *ad],
        "webui": ["webui", "--model", str(base), *ad],
        "gec eval": ["gec", "eval", "--model", str(base), "--data", str(GEC), "--output", str(tmp / "gec")],
        "verify": ["verify", "--base", str(base), *ad, "--merged", str(base)],
        "demo": ["demo", "--workdir", str(tmp / "demo"), "--base", str(base)],
    }


@pytest.fixture(scope="module")
def tiny_adapter(tiny_llama, tmp_path_factory):
    from zhlora.train.lora import make_tiny_adapter

    return make_tiny_adapter(tiny_llama, tmp_path_factory.mktemp("adapter") / "a")


@pytest.mark.parametrize("command", ["train", "chat", "predict", "serve", "webui", "gec eval", "verify", "demo"])
def test_every_command_goes_through_the_one_decision(command, tiny_llama, tiny_adapter, tmp_path, monkeypatch,
                                                     capsys):
    if command == "webui":
        pytest.importorskip("gradio", reason="webui needs the optional gradio (pip install 'zhlora[webui]')")
    if command == "serve":
        pytest.importorskip("fastapi", reason="serve needs the optional fastapi (pip install 'zhlora[serve]')")
    calls = []
    stop_at_decision(monkeypatch, calls)
    assert main(command_lines(tiny_llama, tiny_adapter, tmp_path)[command]) == 2
    assert "decided cuda:0 torch.float" in capsys.readouterr().err
    device, dtype, dev, td = calls[0]
    assert device in ("auto", None) and dev == torch.device("cuda", 0)
    # verify compares in float32 whatever the GPU; the others take auto: fp16 on this old GPU
    assert td == (torch.float32 if command == "verify" else torch.float16)


@pytest.mark.parametrize("argv", [["chat", "--device", "cuda"], ["predict", "--device", "cuda:3", "--input", "x",
                                                                   "--output", "y"]])
def test_a_gpu_asked_for_on_a_machine_without_one_is_a_message(argv, tiny_llama, monkeypatch, capsys):
    fake_gpus(monkeypatch)
    assert main([*argv, "--model", str(tiny_llama)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU is visible to torch" in err and "Traceback" not in err


def test_train_device_key_is_checked(tiny_llama, tmp_path, monkeypatch, capsys):
    fake_gpus(monkeypatch)
    base = [f"model={tiny_llama}", f"data={DATA}", f"output_dir={tmp_path / 'r'}"]
    assert main(["train", *base, "device=cuda:1"]) == 2
    assert "CUDA_VISIBLE_DEVICES" in capsys.readouterr().err
    assert main(["train", *base, "device=cuda", "max_samples=2", "report_to=none"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
