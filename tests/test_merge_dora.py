"""DoRA merge == PEFT merge_and_unload (fp32, <= 1e-5): alone, stacked after a plain LoRA adapter,
on LLaMA, Qwen2 and the native ChatGLM2; `zhlora verify` checks DoRA merges; bad DoRA files refused."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from test_merge_helpers import ZH, build_adapter, edit_json, merged_logits, peft_reference, run_cli

from zhlora.models.tiny import make_tiny_model

CHATGLM_TOK = Path(__file__).parent / "assets" / "chatglm"
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _diff(a, b) -> float:
    return float((a - b).abs().max())


def _merged_with_peft(base, adapters):
    """base with the adapters merged by PEFT one after the other (the model a stacked adapter
    is trained on)."""
    from peft import PeftModel

    from zhlora.models.loading import load_model

    model = load_model(base, dtype=torch.float32)
    for a in adapters:
        model = PeftModel.from_pretrained(model, str(a)).merge_and_unload()
    return model


def test_dora_merge_matches_peft_llama_linear_and_embedding(tmp_path):
    base = make_tiny_model(tmp_path / "base", "llama", texts=ZH, hidden=32, layers=2)
    dora = build_adapter(base, tmp_path / "dora", target_modules=ALL + ["embed_tokens"], use_dora=True)
    assert any(k.endswith("embed_tokens.lora_magnitude_vector") for k in load_file(dora / "adapter_model.safetensors"))
    assert run_cli("merge", "--base", base, "--adapter", dora, "--output", tmp_path / "m") == 0
    ref = peft_reference(base, [dora])
    assert _diff(ref, merged_logits(tmp_path / "m")) <= 1e-5
    # the magnitude counted: the same factors merged as plain LoRA give other logits
    plain = tmp_path / "plain"
    plain.mkdir()
    sd = {k: v for k, v in load_file(dora / "adapter_model.safetensors").items() if "magnitude" not in k}
    save_file(sd, plain / "adapter_model.safetensors")
    (plain / "adapter_config.json").write_text((dora / "adapter_config.json").read_text())
    edit_json(plain / "adapter_config.json", use_dora=False)
    assert run_cli("merge", "--base", base, "--adapter", plain, "--output", tmp_path / "mp") == 0
    assert _diff(ref, merged_logits(tmp_path / "mp")) > 1e-2


def test_dora_stacked_after_plain_lora_norms_the_weight_it_sees(tmp_path, capsys):
    """LoRA a1, then DoRA a2 trained on base + a1: a2's norm is taken of W + a1 + a2, as PEFT's
    sequential merge does. Swapping the order changes the model (plain LoRA alone commutes)."""
    base = make_tiny_model(tmp_path / "base", "llama", texts=ZH, hidden=32, layers=2)
    a1 = build_adapter(base, tmp_path / "a1", seed=1, target_modules=ALL)
    a2 = build_adapter(base, tmp_path / "a2", seed=2, target_modules=["q_proj", "o_proj", "down_proj"],
                       use_dora=True, model=_merged_with_peft(base, [a1]))
    assert run_cli("merge", "--base", base, "--adapter", a1, "--adapter", a2, "--output", tmp_path / "m") == 0
    got = merged_logits(tmp_path / "m")
    assert _diff(peft_reference(base, [a1, a2]), got) <= 1e-5
    assert run_cli("merge", "--base", base, "--adapter", a2, "--adapter", a1, "--output", tmp_path / "r") == 0
    assert _diff(merged_logits(tmp_path / "r"), got) > 1e-3
    capsys.readouterr()
    assert run_cli("verify", "--base", base, "--adapter", a1, "--adapter", a2, "--merged", tmp_path / "m") == 0
    assert "OK: max |logit difference|" in capsys.readouterr().out
    # verify catches a DoRA merged wrongly (the norm of the base weight instead of base + a1)
    assert run_cli("verify", "--base", base, "--adapter", a1, "--adapter", a2, "--merged", tmp_path / "r") == 1


def test_dora_merge_matches_peft_qwen2_with_bias(tmp_path, capsys):
    base = make_tiny_model(tmp_path / "base", "qwen2", texts=ZH, hidden=32, layers=2)
    assert any(k.endswith("q_proj.bias") for k in load_file(base / "model.safetensors"))
    dora = build_adapter(base, tmp_path / "dora", target_modules=ALL, r=8, lora_alpha=4, use_rslora=True,
                         use_dora=True)
    assert run_cli("merge", "--base", base, "--adapter", dora, "--output", tmp_path / "m") == 0
    assert _diff(peft_reference(base, [dora]), merged_logits(tmp_path / "m")) <= 1e-5
    out, orig = load_file(tmp_path / "m" / "model.safetensors"), load_file(base / "model.safetensors")
    assert torch.equal(out["model.layers.0.self_attn.q_proj.bias"], orig["model.layers.0.self_attn.q_proj.bias"])
    assert run_cli("verify", "--base", base, "--adapter", dora, "--merged", tmp_path / "m") == 0


def test_dora_merge_matches_peft_native_chatglm2(tmp_path):
    """PEFT's DoRA wraps the native ChatGLM2's nn.Linear layers (fused query_key_value, MLP,
    output_layer); zhlora's streaming merge gives PEFT's merged logits."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from zhlora.models.chatglm.tiny import make_tiny_chatglm
    from zhlora.models.loading import load_model

    base = make_tiny_chatglm(tmp_path / "base", "chatglm2", tokenizer_dir=CHATGLM_TOK / "v2")
    targets = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "output_layer"]
    pm = get_peft_model(load_model(base, dtype=torch.float32),
                        LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif "lora_magnitude_vector" in n:
                p.mul_(1 + torch.randn(p.shape, generator=g) * 0.2)
    pm.save_pretrained(tmp_path / "a")
    ids = torch.tensor([[5, 17, 33, 64, 2]])
    with torch.no_grad():
        ref = PeftModel.from_pretrained(load_model(base, dtype=torch.float32), str(tmp_path / "a")) \
            .merge_and_unload()(input_ids=ids).logits
    assert run_cli("merge", "--base", base, "--adapter", tmp_path / "a", "--output", tmp_path / "m") == 0
    assert _diff(ref, merged_logits(tmp_path / "m", ids)) <= 1e-5
    assert run_cli("verify", "--base", base, "--adapter", tmp_path / "a", "--merged", tmp_path / "m") == 0


def test_dora_files_that_disagree_with_their_config_are_refused(tmp_path, capsys):
    base = make_tiny_model(tmp_path / "base", "llama", texts=ZH, hidden=32, layers=1)
    dora = build_adapter(base, tmp_path / "dora", target_modules=["q_proj"], use_dora=True, meta=False)
    sd = load_file(dora / "adapter_model.safetensors")
    mag = next(k for k in sd if "magnitude" in k)
    cases = {"short": ({**sd, mag: sd[mag][:-1]}, "DoRA magnitude has shape [31]"),
             "missing": ({k: v for k, v in sd.items() if k != mag}, "lack a lora_magnitude_vector"),
             "orphan": ({mag: sd[mag]}, "has no lora_A/lora_B")}
    for name, (weights, words) in cases.items():
        bad = tmp_path / name
        bad.mkdir()
        save_file(weights, bad / "adapter_model.safetensors")
        (bad / "adapter_config.json").write_text((dora / "adapter_config.json").read_text())
        assert run_cli("merge", "--base", base, "--adapter", bad, "--output", tmp_path / f"o-{name}") == 2, name
        assert words in capsys.readouterr().err, name
        assert not (tmp_path / f"o-{name}").exists()
