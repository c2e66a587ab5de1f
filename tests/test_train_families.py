"""Every transformers-native family trains through the same pipeline and reloads in plain PEFT."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zhlora.train.config import load_config
from zhlora.train.sft import train

ROOT = Path(__file__).resolve().parents[1]
CHAT = ROOT / "examples" / "data" / "zh_chat_sample.json"


@pytest.mark.parametrize("family,template,extra", [
    ("qwen2", "chatml", ["gradient_checkpointing=true", "grad_accum=2"]),
    ("glm4", "glm4", ["packing=true", "lora_target=all"]),
])
def test_family_trains_and_reloads(tmp_path, family, template, extra):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from zhlora.models.tiny import make_tiny_model

    base = make_tiny_model(tmp_path / "base", family, texts=[CHAT.read_text(encoding="utf-8")])
    res = train(load_config(None, [f"model={base}", f"data={CHAT}", f"output_dir={tmp_path / 'a'}",
                                   "max_steps=4", "save_steps=0", "report_to=none", "batch_size=2",
                                   "learning_rate=1e-2", *extra]))
    meta = json.loads((res.output / "zhlora_adapter.json").read_text())
    assert meta["family"] == family and meta["template"] == template
    assert meta["data_summary"]["formats"] == {str(CHAT): "sharegpt"} or \
        list(meta["data_summary"]["formats"].values()) == ["sharegpt"]
    ids = torch.tensor([[5, 9, 14, 20, 33, 40]])
    res.model.eval()
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                      str(res.output)).eval()
    with torch.no_grad():
        a, b = res.model(input_ids=ids).logits, plain(input_ids=ids).logits
        with plain.disable_adapter():
            c = plain(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-6)
    assert (a - c).abs().max() > 1e-5
