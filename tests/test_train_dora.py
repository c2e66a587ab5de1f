"""use_dora=true trains PEFT's DoRA for every family (transformers LLaMA/Qwen2/GLM-4 and the
native ChatGLM-6B/ChatGLM2): the magnitudes train, the adapter is a standard PEFT DoRA adapter,
and zhlora merge + verify take it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_merge_helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "zh_instruct_sample.jsonl"
ASSETS = Path(__file__).parent / "assets" / "chatglm"


def _base(tmp_path: Path, family: str) -> Path:
    from zhlora.models.chatglm.tiny import make_tiny_chatglm
    from zhlora.models.tiny import make_tiny_model

    if family in ("chatglm", "chatglm2"):
        return make_tiny_chatglm(tmp_path / "base", family, tokenizer_dir=ASSETS / ("v1" if family == "chatglm" else "v2"))
    return make_tiny_model(tmp_path / "base", family, texts=[DATA.read_text(encoding="utf-8")], hidden=32)


@pytest.mark.parametrize("family", ["llama", "qwen2", "glm4", "chatglm2", "chatglm"])
def test_use_dora_trains_magnitudes_and_merges(tmp_path, family, capsys):
    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    base = _base(tmp_path, family)
    res = train(load_config(None, [f"model={base}", f"data={DATA}", f"output_dir={tmp_path / 'a'}", "max_steps=2",
                                   "batch_size=4", "max_samples=8", "cutoff_len=96", "lora_r=4", "lora_alpha=8",
                                   "lora_target=all", "use_dora=true", "learning_rate=5e-2", "lora_dropout=0.0",
                                   "save_steps=0", "report_to=none"]))
    assert "DoRA r=4" in capsys.readouterr().out
    cfg = json.loads((res.output / "adapter_config.json").read_text())
    assert cfg["use_dora"] is True
    weights = load_file(res.output / "adapter_model.safetensors")
    mags = {k: v for k, v in weights.items() if k.endswith("lora_magnitude_vector")}
    assert mags and len(mags) == sum(1 for k in weights if k.endswith("lora_A.weight"))
    base_sd = load_file(base / "model.safetensors")
    moved = 0
    for key, m in mags.items():        # PEFT starts m at ||W|| per output row; training moves it
        w = base_sd[key.removeprefix("base_model.model.").replace("lora_magnitude_vector", "weight")]
        assert m.shape == (w.shape[0],)
        moved += not torch.allclose(m, torch.linalg.vector_norm(w.float(), dim=1), atol=1e-6)
    assert moved > 0
    assert run_cli("merge", "--base", base, "--adapter", res.output, "--output", tmp_path / "m") == 0
    assert run_cli("verify", "--base", base, "--adapter", res.output, "--merged", tmp_path / "m") == 0
    assert "OK: max |logit difference|" in capsys.readouterr().out
