"""`zhlora train --plan`: meta-device parameter counts of the published configs, the memory
estimate's parts, and the messages for a config zhlora does not know."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from zhlora.cli import main
from zhlora.train.config import load_config
from zhlora.train.plan import GiB, build_plan, estimate, meta_model, read_shape

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"
DATA = str(ROOT / "examples" / "data" / "zh_instruct_sample.jsonl")

# What each model card (or its Hugging Face page) publishes; see examples/configs/SOURCES.md.
PUBLISHED = {
    "chatglm-6b": 6.2e9,
    "chatglm2-6b": 6.24e9,
    "chatglm3-6b": 6.24e9,
    "glm-4-9b-chat": 9.4e9,
    "qwen2.5-7b-instruct": 7.61e9,
    "chinese-alpaca-2-7b": 12.9 * GiB / 2,          # 12.9 GB (GiB) of fp16 weights
    "chinese-llama-7b": 6.74e9 + (49953 - 32000) * 4096 * 2,
}


def test_every_shipped_config_has_a_published_count():
    assert {p.parent.name for p in CONFIGS.glob("*/config.json")} == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_meta_device_parameter_count_matches_the_model_card(name):
    model = meta_model(CONFIGS / name)
    assert all(p.device.type == "meta" for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert total == pytest.approx(PUBLISHED[name], rel=0.02), f"{name}: {total:,}"


def test_qwen_non_embedding_count_and_chinese_llama_vocab():
    qwen = read_shape(meta_model(CONFIGS / "qwen2.5-7b-instruct"))
    non_embedding = qwen.total - 2 * qwen.vocab * qwen.hidden  # untied embedding and head
    assert non_embedding == pytest.approx(6.53e9, rel=0.005)
    assert read_shape(meta_model(CONFIGS / "chinese-llama-7b")).vocab == 49953


def _cfg(model, *extra):
    return load_config(None, [f"model={model}", f"data={DATA}", "cutoff_len=1024", "batch_size=4",
                              "packing=true", *extra])


def test_plan_parts_for_chatglm3():
    shape, (lora, qlora) = build_plan(_cfg(CONFIGS / "chatglm3-6b", "lora_r=8", "lora_target=default"))
    # LoRA r=8 on query_key_value (4096 -> 4608) in 28 layers: 28 x 8 x (4096 + 4608)
    assert shape.trainable == 28 * 8 * (4096 + 4608)
    assert (shape.layers, shape.hidden, shape.ffn, shape.gated) == (28, 4096, 13696, True)
    assert lora.weights == shape.total * 2 and lora.adapter == shape.trainable * 16
    assert qlora.weights < lora.weights / 2.3          # 4-bit linears; embeddings, head upcast to fp32
    assert qlora.activations < lora.activations and lora.total > qlora.total  # QLoRA: checkpointing
    ckpt = build_plan(_cfg(CONFIGS / "chatglm3-6b", "gradient_checkpointing=true"))[1][0]
    assert ckpt.activations < lora.activations / 5 and ckpt.weights == lora.weights
    half = estimate(shape, _cfg(CONFIGS / "chatglm3-6b", "cutoff_len=512"), 2, quantized=False)
    assert half.activations == pytest.approx(lora.activations / 2)


def test_plan_cli_prints_counts_and_says_no_gpu(capsys):
    assert main(["train", "--plan", f"model={CONFIGS / 'qwen2.5-7b-instruct'}"]) == 0  # no data needed
    out = capsys.readouterr().out
    assert "7,615,616,512" in out and "QLoRA (4-bit NF4)" in out and "estimated peak" in out
    assert "none visible" in out or "GPU 0" in out


def test_plan_for_a_config_zhlora_does_not_know(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 8}))
    assert main(["train", "--plan", f"model={tmp_path}", f"data={DATA}"]) == 2
    err = capsys.readouterr().err
    assert "model_type 'mamba' is not supported" in err and "Traceback" not in err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": "big"}))
    assert main(["train", "--plan", f"model={tmp_path}", f"data={DATA}"]) == 2
    err = capsys.readouterr().err
    assert "config.json: cannot build the model" in err and "Traceback" not in err
