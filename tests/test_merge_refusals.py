"""Every merge it cannot do exactly is refused before writing, with a message that says why."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_merge_helpers import ZH, build_adapter, edit_json, run_cli

from zhlora.models.tiny import build_char_tokenizer, make_tiny_model

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("base"), "llama", texts=ZH, hidden=32, layers=2)


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    return build_adapter(base, tmp_path_factory.mktemp("ad") / "a", target_modules=["q_proj", "v_proj"])


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _refused(capsys, tmp_path, base, *adapters, extra=()) -> str:
    args = ["merge", "--base", base] + [x for a in adapters for x in ("--adapter", a)] + list(extra)
    assert run_cli(*args, "--output", tmp_path / "out") == 2
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    return capsys.readouterr().err


@pytest.mark.parametrize("field,value,words", [
    ("use_dora", True, "lack a lora_magnitude_vector"), ("peft_type", "IA3", "LoRA adapters only"),
    ("bias", "all", "bias='none'"), ("init_lora_weights", "pissa", "rewrites the base"),
    ("layer_replication", [[0, 2]], "layer replication")])
def test_merge_refuses_unmergeable_adapter_configs(base, adapter, tmp_path, capsys, field, value, words):
    bad = _copy(adapter, tmp_path / "bad")
    edit_json(bad / "adapter_config.json", **{field: value})
    err = _refused(capsys, tmp_path, base, bad)
    assert words in err and "adapter_config.json" in err


def test_merge_refuses_quantized_base(base, adapter, tmp_path, capsys):
    qb = _copy(base, tmp_path / "qbase")
    edit_json(qb / "config.json", quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    assert "quantized" in _refused(capsys, tmp_path, qb, adapter, extra=["--no-fingerprint-check"])
    ib = _copy(base, tmp_path / "ibase")
    sd = load_file(ib / "model.safetensors")
    sd["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(32, 32, dtype=torch.int8)
    save_file(sd, ib / "model.safetensors")
    err = _refused(capsys, tmp_path, ib, adapter)
    assert "model.layers.0.self_attn.q_proj.weight" in err and "quantized" in err


def test_merge_refuses_adapter_for_another_base(base, adapter, tmp_path, capsys):
    other = make_tiny_model(tmp_path / "other", "llama", texts=ZH, hidden=48, layers=2, seed=1)
    err = _refused(capsys, tmp_path, other, adapter)
    assert "was trained on" in err and "--no-fingerprint-check" in err
    err = _refused(capsys, tmp_path, other, adapter, extra=["--no-fingerprint-check"])  # shapes still checked
    assert "model.layers.0.self_attn.q_proj: LoRA delta has shape [32, 32]" in err and "[48, 48]" in err


def test_merge_refuses_missing_target_module(base, adapter, tmp_path, capsys):
    bad = _copy(adapter, tmp_path / "bad")
    sd = load_file(bad / "adapter_model.safetensors")
    sd = {k.replace("layers.1.", "layers.7."): v for k, v in sd.items()}
    save_file(sd, bad / "adapter_model.safetensors")
    err = _refused(capsys, tmp_path, base, bad)
    assert "the base has no tensor model.layers.7.self_attn.q_proj.weight" in err and "(2 problem(s))" in err


def test_merge_refuses_vocab_mismatches(tmp_path, capsys):
    tok = build_char_tokenizer(ZH, "llama", extra_chars="甲乙丙")
    base = make_tiny_model(tmp_path / "b", "llama", tokenizer=tok, vocab_size=len(tok) - 3, hidden=32)
    # embedding extended but lm_head not
    half = build_adapter(base, tmp_path / "half", resize_to=len(tok), modules_to_save=["embed_tokens"])
    sd = load_file(half / "adapter_model.safetensors")
    save_file({k: v for k, v in sd.items() if "lm_head" not in k}, half / "adapter_model.safetensors")
    err = _refused(capsys, tmp_path, base, half)
    assert "vocabulary tensors disagree" in err and f"has {len(tok)} rows" in err
    # adapter ships a bigger tokenizer but never extended the embedding
    plain = build_adapter(base, tmp_path / "plain", tokenizer=tok)
    err = _refused(capsys, tmp_path, base, plain)
    assert f"has {len(tok)} tokens but the merged embedding has only {len(tok) - 3} rows" in err


def test_merge_refuses_bin_adapter_without_allow_bin(base, adapter, tmp_path, capsys):
    bad = _copy(adapter, tmp_path / "binad")
    torch.save(load_file(bad / "adapter_model.safetensors"), bad / "adapter_model.bin")
    (bad / "adapter_model.safetensors").unlink()
    assert "--allow-bin" in _refused(capsys, tmp_path, base, bad)
    assert run_cli("merge", "--base", base, "--adapter", bad, "--output", tmp_path / "ok", "--allow-bin") == 0


def test_merge_refuses_existing_output_unless_overwrite(base, adapter, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    assert run_cli("merge", "--base", base, "--adapter", adapter, "--output", tmp_path / "out") == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "out" / "keep.txt").is_file()
    assert run_cli("merge", "--base", base, "--adapter", adapter, "--output", tmp_path / "out", "--overwrite") == 0
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "model.safetensors").is_file()


def test_merge_nan_in_result_aborts_and_leaves_nothing(base, adapter, tmp_path, capsys):
    bad = _copy(adapter, tmp_path / "nan")
    sd = load_file(bad / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    sd[key][0, 0] = float("nan")
    save_file(sd, bad / "adapter_model.safetensors")
    err = _refused(capsys, tmp_path, base, bad)
    assert "model.layers.1.self_attn.v_proj.weight" in err and "NaN/Inf" in err
    big = _copy(adapter, tmp_path / "big")             # finite in fp32, overflows fp16
    sd = load_file(big / "adapter_model.safetensors")
    sd[key] = sd[key] * 1e6
    save_file(sd, big / "adapter_model.safetensors")
    assert "float16 overflowed" in _refused(capsys, tmp_path, base, big, extra=["--dtype", "float16"])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_merge_interrupted_leaves_no_output(base, adapter, tmp_path, sig):
    """Kill the CLI in the middle of writing shards: the output folder never appears; a
    Ctrl-C also removes the temporary folder."""
    # default_int_handler: a shell that runs the suite in the background (`cmd &`) starts it with
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler in the child
    slow = ("import signal, time, sys, zhlora.merge.writer as w\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "orig = w.StreamingShardWriter.write\n"
            "def slow(self, *a):\n    time.sleep(0.1)\n    orig(self, *a)\n"
            "w.StreamingShardWriter.write = slow\n"
            "from zhlora.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", slow, "merge", "--base", str(base), "--adapter", str(adapter),
                             "--output", str(tmp_path / "out"), "--max-shard-size", "1KB", "--no-progress"],
                            env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".out.tmp-*/model-00002-*")):
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(sig)
    rc = proc.wait(timeout=30)
    assert rc != 0 and not (tmp_path / "out").exists()
    left = list(tmp_path.glob(".out.tmp-*"))
    assert (len(left) == 1) if sig == signal.SIGKILL else (left == [])
