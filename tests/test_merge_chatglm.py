"""Merging into native ChatGLM checkpoints (original THUDM layout, fused query_key_value).

Bases: the tiny ChatGLM-6B / ChatGLM2-6B checkpoints in ../shared/parity (written by THUDM's
original code). The adapters are written the way PEFT names them for those models.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_merge_helpers import run_cli

P = "base_model.model."


def _synthetic_adapter(folder, shapes: dict[str, tuple[int, int]], r=4, alpha=8, rslora=False, seed=0):
    """{module: (out, in)} -> a PEFT-format adapter folder with random A and B."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for mod, (out, inp) in shapes.items():
        sd[f"{P}{mod}.lora_A.weight"] = torch.randn(r, inp, generator=g) * 0.2
        sd[f"{P}{mod}.lora_B.weight"] = torch.randn(out, r, generator=g) * 0.2
    folder.mkdir()
    save_file(sd, folder / "adapter_model.safetensors")
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora, "bias": "none",
           "target_modules": sorted({m.split(".")[-1] for m in shapes}), "fan_in_fan_out": False}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder, sd


def _expected(base_sd, ad_sd, mod, target, scale):
    a = ad_sd[f"{P}{mod}.lora_A.weight"].double()
    b = ad_sd[f"{P}{mod}.lora_B.weight"].double()
    return (base_sd[target].double() + scale * (b @ a)).float()


def test_merge_chatglm2_original_layout(shared_dir, tmp_path):
    base = shared_dir / "parity" / "chatglm2" / "checkpoint"
    mods = {"transformer.encoder.layers.0.self_attention.query_key_value": (128, 64),
            "transformer.encoder.layers.1.self_attention.query_key_value": (128, 64),
            "transformer.encoder.layers.1.mlp.dense_4h_to_h": (64, 160),
            "transformer.output_layer": (320, 64)}
    ad, ad_sd = _synthetic_adapter(tmp_path / "a", mods, r=4, alpha=8, rslora=True)
    assert run_cli("merge", "--base", base, "--adapter", ad, "--output", tmp_path / "m") == 0
    base_sd, out = load_file(base / "model.safetensors"), load_file(tmp_path / "m" / "model.safetensors")
    assert set(out) == set(base_sd)
    for mod in mods:
        exp = _expected(base_sd, ad_sd, mod, mod + ".weight", 8 / math.sqrt(4))
        assert torch.allclose(out[mod + ".weight"], exp, atol=1e-6, rtol=0), mod
        assert not torch.equal(out[mod + ".weight"], base_sd[mod + ".weight"])
    untouched = [k for k in base_sd if not any(k.startswith(m) for m in mods)]
    assert untouched and all(torch.equal(out[k], base_sd[k]) for k in untouched)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["padded_vocab_size"] == 320 and cfg["dtype"] == "float32"
    assert not list((tmp_path / "m").glob("*.py"))


def test_merge_chatglm_v1_tied_head_lora_lands_on_word_embeddings(shared_dir, tmp_path):
    """ChatGLM-6B ties lm_head to transformer.word_embeddings (no lm_head in the file): a LoRA
    on lm_head changes that shared tensor, as PEFT's merge does on the tied parameter."""
    base = shared_dir / "parity" / "chatglm" / "checkpoint"
    mods = {"transformer.layers.0.attention.query_key_value": (192, 64), "lm_head": (256, 64)}
    ad, ad_sd = _synthetic_adapter(tmp_path / "a", mods, r=2, alpha=4)
    assert run_cli("merge", "--base", base, "--adapter", ad, "--output", tmp_path / "m") == 0
    base_sd, out = load_file(base / "model.safetensors"), load_file(tmp_path / "m" / "model.safetensors")
    assert "lm_head.weight" not in out
    exp = _expected(base_sd, ad_sd, "lm_head", "transformer.word_embeddings.weight", 2.0)
    assert torch.allclose(out["transformer.word_embeddings.weight"], exp, atol=1e-6, rtol=0)
    exp = _expected(base_sd, ad_sd, "transformer.layers.0.attention.query_key_value",
                    "transformer.layers.0.attention.query_key_value.weight", 2.0)
    assert torch.allclose(out["transformer.layers.0.attention.query_key_value.weight"], exp, atol=1e-6, rtol=0)


def test_merge_chatglm2_matches_peft(shared_dir, tmp_path):
    """End to end through PEFT on zhlora's native ChatGLM2."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from zhlora.models.loading import load_model

    base = shared_dir / "parity" / "chatglm2" / "checkpoint"
    model = load_model(base, dtype=torch.float32)  # a broken native loader must fail here, not skip
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value", "dense_4h_to_h"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    pm.save_pretrained(tmp_path / "a")
    ids = torch.tensor([[5, 17, 33, 64, 2]])
    with torch.no_grad():
        ref = PeftModel.from_pretrained(load_model(base, dtype=torch.float32), str(tmp_path / "a")) \
            .merge_and_unload()(input_ids=ids).logits
    assert run_cli("merge", "--base", base, "--adapter", tmp_path / "a", "--output", tmp_path / "m") == 0
    with torch.no_grad():
        got = load_model(tmp_path / "m", dtype=torch.float32)(input_ids=ids).logits
    assert float((ref - got).abs().max()) <= 1e-5
