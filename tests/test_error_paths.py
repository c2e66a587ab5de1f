"""Errors a user meets with damaged or misplaced inputs end in a message, not a traceback."""
from __future__ import annotations

import shutil

import pytest

from zhlora.cli import main
from zhlora.errors import ZhloraError


@pytest.fixture()
def damaged_model(tiny_llama, tmp_path):
    """The tiny model with its weights file cut short (an interrupted copy)."""
    d = tmp_path / "damaged"
    shutil.copytree(tiny_llama, d)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    return d


def test_load_model_damaged_weights(damaged_model):
    from zhlora.models.loading import load_model

    with pytest.raises(ZhloraError, match=r"damaged.*could not load the model weights.*re-copy"):
        load_model(damaged_model)


def test_merge_damaged_base(tiny_llama, damaged_model, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))  # adapter built on the intact base
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(str(adapter))
    rc = main(["merge", "--base", str(damaged_model), "--adapter", str(adapter), "--output", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "not a readable safetensors file" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_folder_given_as_data_file(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path)]) != 0
    assert "is a folder; pass the data file itself" in capsys.readouterr().err


def _run_without(module: str, argv: list[str]):
    """Run the CLI in a fresh process where `module` cannot be imported."""
    import subprocess
    import sys

    code = (f"import sys; sys.modules[{module!r}] = None; from zhlora.cli import main; "
            f"raise SystemExit(main({argv!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_missing_optional_dependency_says_which_extra(tiny_llama, tmp_path):
    res = _run_without("gguf", ["export", "gguf", "--model", str(tiny_llama), "--output", str(tmp_path / "m.gguf")])
    assert res.returncode == 2, res.stderr[-1500:]
    assert "pip install 'zhlora[export]'" in res.stderr and "Traceback" not in res.stderr


def test_train_without_tensorboard_or_deepspeed(tiny_llama, tmp_path):
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "examples" / "data" / "zh_instruct_sample.jsonl"
    common = ["train", f"model={tiny_llama}", f"data={data}", "max_steps=1", "save_steps=0", "template=alpaca"]
    res = _run_without("tensorboard", common + [f"output_dir={tmp_path / 'a'}"])
    assert res.returncode == 0, res.stderr[-1500:]
    assert "tensorboard is not installed" in res.stdout and (tmp_path / "a" / "adapter_model.safetensors").is_file()
    ds = Path(__file__).resolve().parents[1] / "examples" / "deepspeed" / "zero2.json"
    res = _run_without("deepspeed", common + [f"output_dir={tmp_path / 'b'}", f"deepspeed={ds}"])
    assert res.returncode == 2 and "DS_BUILD_OPS=0 pip install 'zhlora[deepspeed]'" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "b").exists()
