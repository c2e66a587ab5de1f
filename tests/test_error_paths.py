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
