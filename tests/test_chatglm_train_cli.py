"""End to end: a tiny random ChatGLM2 (packed rows) and a tiny ChatGLM-6B go through
zhlora's training entry point (LoRA); the standard PEFT adapter reloads with plain PeftModel.from_pretrained,
equals the in-memory trained model exactly and
gives the logits of a hand-applied LoRA; the merged model saves and reloads in THUDM's layout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import zhlora  # noqa: F401
from zhlora.models.chatglm.tiny import make_tiny_chatglm

ASSETS = Path(__file__).parent / "assets" / "chatglm"
DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "zh_instruct_sample.jsonl"


def _manual_lora_logits(base_dir, adapter_dir, ids):
    """W + (alpha/r) * B @ A on every adapted layer, without PEFT."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    n = 0
    for key, a in weights.items():
        if "lora_A" not in key:
            continue
        b = weights[key.replace("lora_A", "lora_B")]
        target = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        params[target].data += scale * b @ a
        n += 1
    with torch.no_grad():
        return model(ids).logits, n


@pytest.mark.skipif(not DATA.is_file(), reason="examples/data sample not present")
@pytest.mark.parametrize("version,sub,packing", [("chatglm2", "v2", "true"), ("chatglm", "v1", "false")])
def test_chatglm_train_cli_lora_roundtrip(tmp_path, version, sub, packing):
    from peft import PeftModel

    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    base = make_tiny_chatglm(tmp_path / "base", version, tokenizer_dir=ASSETS / sub, seed=1)
    out = tmp_path / "adapter"
    res = train(load_config(None, [f"model={base}", f"data={DATA}", f"output_dir={out}", "max_steps=3", "batch_size=4",
               "lora_r=4", "lora_alpha=8", "lora_target=all", "learning_rate=5e-2", "cutoff_len=96",
               f"packing={packing}", "max_samples=16", "save_steps=0", "report_to=none", "lora_dropout=0.0",
               "eval_ratio=0", "gradient_checkpointing=true"]))
    assert res.output == out.resolve()
    meta = json.loads((out / "zhlora_adapter.json").read_text())
    assert meta["template"] == ("chatglm" if version == "chatglm" else "chatglm2")
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"]

    base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    ids = torch.tensor([[10, 11, 12, 13, base_model.spec.gmask_token_id or 14, base_model.spec.bos_token_id or 15,
                         16, 17]])
    with torch.no_grad():
        plain = base_model(ids).logits
        peft_model = PeftModel.from_pretrained(base_model, out).eval()
        adapted = peft_model(input_ids=ids).logits
    manual, n_layers = _manual_lora_logits(base, out, ids)
    assert n_layers == 2 * 4  # 2 layers x 4 target modules
    assert (adapted - plain).abs().max().item() > 1e-4  # training changed something
    assert (adapted - manual).abs().max().item() < 1e-5
    res.model.eval()
    with torch.no_grad():  # the reloaded adapter is the model that was trained, exactly
        assert torch.equal(res.model(input_ids=ids).logits, adapted)

    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    saved = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert saved["auto_map"] == json.loads((base / "config.json").read_text())["auto_map"]
    assert not any("lora" in k for k in load_file(tmp_path / "merged" / "model.safetensors"))
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (again(ids).logits - adapted).abs().max().item() < 1e-5
