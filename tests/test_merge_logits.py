"""zhlora merge == PEFT merge_and_unload, logit for logit (fp32, <= 1e-5)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from test_merge_helpers import ZH, build_adapter, merged_logits, peft_reference, run_cli

from zhlora.models.tiny import build_char_tokenizer, make_tiny_model

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("base"), "llama", texts=ZH, hidden=32, layers=2)


def _close(out, base, adapters, tol=1e-5):
    ref = peft_reference(base, adapters)
    got = merged_logits(out)
    diff = float((ref - got).abs().max())
    assert diff <= tol, diff
    return ref, got


def test_merge_single_adapter_all_linear_and_embedding_lora(base, tmp_path):
    ad = build_adapter(base, tmp_path / "a", target_modules=ALL + ["embed_tokens"], lora_alpha=16)
    assert run_cli("merge", "--base", base, "--adapter", ad, "--output", tmp_path / "m") == 0
    ref, got = _close(tmp_path / "m", base, [ad])
    plain = merged_logits(base)
    assert float((plain - ref).abs().max()) > 1e-2          # the adapter really changes the model
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["dtype"] == cfg["torch_dtype"] == "float32"
    assert cfg["vocab_size"] == json.loads((base / "config.json").read_text())["vocab_size"]
    assert (tmp_path / "m" / "tokenizer.json").is_file() and (tmp_path / "m" / "generation_config.json").is_file()
    assert not list(tmp_path.glob(".m.tmp-*"))


def test_merge_two_stacked_adapters_match_sequential_peft(base, tmp_path):
    a1 = build_adapter(base, tmp_path / "a1", seed=1, target_modules=ALL)
    a2 = build_adapter(base, tmp_path / "a2", seed=2, target_modules=["q_proj", "o_proj"], r=2, lora_alpha=4)
    assert run_cli("merge", "--base", base, "--adapter", a1, "--adapter", a2, "--output", tmp_path / "m") == 0
    _close(tmp_path / "m", base, [a1, a2])
    one = merged_logits(tmp_path / "m")
    assert run_cli("merge", "--base", base, "--adapter", a1, "--output", tmp_path / "m1") == 0
    assert float((merged_logits(tmp_path / "m1") - one).abs().max()) > 1e-3   # the 2nd adapter counted


def test_merge_extended_vocabulary_then_stacked_extension(tmp_path):
    """Chinese-LLaMA-Plus then Chinese-Alpaca-Plus: each adapter grows the vocabulary and trains
    embed_tokens/lm_head whole; the tokenizer comes from the last adapter that has one."""
    tok1 = build_char_tokenizer(ZH, "llama", extra_chars="甲乙丙丁戊")
    base = make_tiny_model(tmp_path / "base", "llama", tokenizer=tok1, vocab_size=len(tok1) - 5, hidden=32)
    mts = dict(modules_to_save=["embed_tokens", "lm_head"], target_modules=["q_proj", "v_proj"])
    a1 = build_adapter(base, tmp_path / "a1", resize_to=len(tok1), tokenizer=tok1, **mts)
    inter = tmp_path / "inter"                  # the config a2 was trained on: base + a1's vocabulary
    inter.mkdir()
    cfg = json.loads((base / "config.json").read_text())
    (inter / "config.json").write_text(json.dumps({**cfg, "vocab_size": len(tok1)}))
    tok2 = build_char_tokenizer(ZH, "llama", extra_chars="甲乙丙丁戊己")
    a2 = build_adapter(base, tmp_path / "a2", seed=3, resize_to=len(tok2), tokenizer=tok2,
                       fingerprint_dir=inter, **mts)
    assert run_cli("merge", "--base", base, "--adapter", a1, "--adapter", a2, "--output", tmp_path / "m") == 0
    ids = torch.tensor([[1, 5, len(tok1) - 2, len(tok2) - 1, 9]])   # new tokens of both adapters
    ref = peft_reference(base, [a1, a2], ids)
    assert float((ref - merged_logits(tmp_path / "m", ids)).abs().max()) <= 1e-5
    out_cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert out_cfg["vocab_size"] == len(tok2) == cfg["vocab_size"] + 6
    assert json.loads((tmp_path / "m" / "tokenizer.json").read_text()) == json.loads(
        (a2 / "tokenizer.json").read_text())


def test_merge_rslora_and_rank_alpha_patterns(base, tmp_path):
    rs = build_adapter(base, tmp_path / "rs", r=8, lora_alpha=4, use_rslora=True, target_modules=ALL)
    pat = build_adapter(base, tmp_path / "pat", seed=5, target_modules=ALL,
                        rank_pattern={"down_proj": 2, "layers.1.self_attn.q_proj": 6},
                        alpha_pattern={"o_proj": 32})
    assert run_cli("merge", "--base", base, "--adapter", rs, "--output", tmp_path / "m_rs") == 0
    _close(tmp_path / "m_rs", base, [rs])
    assert run_cli("merge", "--base", base, "--adapter", pat, "--output", tmp_path / "m_pat") == 0
    _close(tmp_path / "m_pat", base, [pat])


def _three_shard_base(tmp_path):
    from zhlora.models.loading import load_model

    base = make_tiny_model(tmp_path / "base0", "llama", texts=ZH, hidden=64, layers=2)
    model = load_model(base, dtype=torch.float32)
    model.save_pretrained(tmp_path / "base", max_shard_size="200KB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "base" / f).write_bytes((base / f).read_bytes())
    shards = sorted((tmp_path / "base").glob("model-*.safetensors"))
    assert len(shards) == 3, [s.name for s in shards]
    return tmp_path / "base"


def test_merge_three_shard_base_and_sharded_output(tmp_path):
    _three_shard_base(tmp_path)
    ad = build_adapter(tmp_path / "base", tmp_path / "a", target_modules=ALL)
    assert run_cli("merge", "--base", tmp_path / "base", "--adapter", ad, "--output", tmp_path / "m",
                   "--max-shard-size", "80KB") == 0
    _close(tmp_path / "m", tmp_path / "base", [ad])
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 4 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    for f in files:      # every shard respects the limit unless it holds one oversized tensor
        with safe_open(str(tmp_path / "m" / f), "pt") as h:
            keys = list(h.keys())
            size = sum(h.get_tensor(k).numel() * 4 for k in keys)
        assert size <= 80_000 or len(keys) == 1, (f, size)


def test_merge_bin_base_needs_allow_bin(base, tmp_path):
    from safetensors.torch import load_file

    binb = tmp_path / "binbase"
    binb.mkdir()
    torch.save(load_file(base / "model.safetensors"), binb / "pytorch_model.bin")
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (binb / f).write_bytes((base / f).read_bytes())
    ad = build_adapter(base, tmp_path / "a", target_modules=ALL, meta=False)
    assert run_cli("merge", "--base", binb, "--adapter", ad, "--output", tmp_path / "m") == 2
    assert not (tmp_path / "m").exists()
    assert run_cli("merge", "--base", binb, "--adapter", ad, "--output", tmp_path / "m", "--allow-bin") == 0
    _close(tmp_path / "m", base, [ad])


def test_merge_float16_output_and_verify_cli(base, tmp_path, capsys):
    ad = build_adapter(base, tmp_path / "a", target_modules=ALL)
    assert run_cli("merge", "--base", base, "--adapter", ad, "--output", tmp_path / "m16", "--dtype", "float16") == 0
    with safe_open(str(tmp_path / "m16" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert json.loads((tmp_path / "m16" / "config.json").read_text())["dtype"] == "float16"
    ref = peft_reference(base, [ad])
    diff16 = float((ref - merged_logits(tmp_path / "m16")).abs().max())
    assert 0 < diff16 < 5e-2                    # rounded once to fp16, not garbage
    assert run_cli("verify", "--base", base, "--adapter", ad, "--merged", tmp_path / "m16") == 0
    assert "OK: max |logit difference|" in capsys.readouterr().out


def test_merge_write_queue_and_background_sync_do_not_change_the_bytes(tmp_path, monkeypatch):
    """The background writer (queue of merged tensors) and syncer (fdatasync while a shard
    grows) are pure scheduling: with no queue and a sync after every tensor the output is
    byte-identical to the default schedule, in every output shard, in float16."""
    from zhlora.merge import merge as merge_mod
    from zhlora.merge import writer as writer_mod

    base = _three_shard_base(tmp_path)
    ad = build_adapter(base, tmp_path / "a", target_modules=ALL, lora_alpha=16)
    argv = ["merge", "--base", base, "--adapter", ad, "--max-shard-size", "60KB", "--dtype", "float16"]
    assert run_cli(*argv, "--output", tmp_path / "m1") == 0
    monkeypatch.setattr(merge_mod.ShardOutputs, "MAX_QUEUED", 0)
    monkeypatch.setattr(writer_mod, "SYNC_EVERY", 1)
    assert run_cli(*argv, "--output", tmp_path / "m2") == 0
    files = sorted(f.name for f in (tmp_path / "m1").glob("*.safetensors"))
    assert len(files) >= 3 and files == sorted(f.name for f in (tmp_path / "m2").glob("*.safetensors"))
    for f in files:
        assert (tmp_path / "m1" / f).read_bytes() == (tmp_path / "m2" / f).read_bytes(), f
    _close(tmp_path / "m2", base, [ad], tol=5e-3)
