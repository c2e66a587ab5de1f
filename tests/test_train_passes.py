"""Long padding-free batches run in pieces (`pass_tokens`): cut at sample starts, gradients
accumulated, the same loss and weights as one pass (zhlora.train.trainer)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zhlora.errors import ConfigError
from zhlora.train import trainer as trainer_mod
from zhlora.train.trainer import CPU_PASS_TOKENS, resolve_pass_tokens, sample_pieces

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "zh_instruct_sample.jsonl"
LENGTHS = [130, 200, 90, 500, 60, 700, 300, 1000, 120]


def _flat_batch(lengths):
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    ids = torch.arange(pos.shape[1])[None]
    return {"input_ids": ids, "labels": ids + 1, "position_ids": pos, "extra": "kept"}


def test_pieces_are_balanced_and_cut_at_sample_starts():
    batch = _flat_batch(LENGTHS)
    starts = set(torch.cumsum(torch.tensor(LENGTHS), 0).tolist()[:-1])
    for limit, expect in ((1536, [1680, 1420]), (1024, [980, 1000, 1120]), (512, [420, 560, 700, 300, 1000, 120]),
                          (100, LENGTHS)):   # samples longer than a share stay whole
        pieces = sample_pieces(batch, limit)
        assert [p["input_ids"].shape[1] for p in pieces] == expect, limit
        for key in ("input_ids", "labels", "position_ids"):
            assert torch.equal(torch.cat([p[key] for p in pieces], dim=1), batch[key])
        cuts = torch.cumsum(torch.tensor(expect), 0).tolist()[:-1]
        assert set(cuts) <= starts
        assert all(p["extra"] == "kept" and p["position_ids"][0, 0] == 0 for p in pieces)


def test_batches_that_are_not_split():
    batch = _flat_batch(LENGTHS)
    assert sample_pieces(batch, 0) == [batch]                     # no limit
    assert sample_pieces(batch, 5000) == [batch]                  # fits
    assert sample_pieces(batch, 1551) == [batch]                  # T < 2 x limit: passes too short to pay
    masked = dict(batch, attention_mask=torch.ones_like(batch["input_ids"]))
    assert sample_pieces(masked, 100) == [masked]                 # a padded or masked batch
    rows = {k: v.expand(2, -1) if torch.is_tensor(v) else v for k, v in batch.items()}
    assert sample_pieces(rows, 100) == [rows]                     # several rows
    no_pos = {k: v for k, v in batch.items() if k != "position_ids"}
    assert sample_pieces(no_pos, 100) == [no_pos]


def test_pass_tokens_default_follows_the_device():
    assert resolve_pass_tokens(None, on_gpu=False) == CPU_PASS_TOKENS
    assert resolve_pass_tokens(None, on_gpu=True) == 0
    assert resolve_pass_tokens(0, on_gpu=False) == 0
    assert resolve_pass_tokens(512, on_gpu=True) == 512


def test_pass_tokens_config_errors(tmp_path):
    from zhlora.train.config import load_config

    base = [f"model={tmp_path}", f"data={tmp_path / 'x.jsonl'}"]
    with pytest.raises(ConfigError, match="pass_tokens"):
        load_config(None, [*base, "pass_tokens=-1"])
    for off in ("padding_free=false", "label_only_loss=false"):   # it would be silently ignored
        with pytest.raises(ConfigError, match="drop pass_tokens"):
            load_config(None, [*base, "pass_tokens=512", off])
    assert load_config(None, [*base, "pass_tokens=0", "padding_free=false"]).pass_tokens == 0


@pytest.mark.parametrize("family,checkpointing", [("llama", "false"), ("llama", "true"), ("qwen2", "true"), ("glm4", "false")])
def test_training_in_pieces_equals_one_pass(tmp_path, monkeypatch, capsys, family, checkpointing):
    """Same logged losses and the same trained weights, with the batches really split."""
    from zhlora.models.tiny import make_tiny_model
    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    from conftest import ZH_TEXTS

    model = make_tiny_model(tmp_path / family, family, texts=ZH_TEXTS, hidden=64, layers=2)
    split = []

    def counting(inputs, limit):
        pieces = sample_pieces(inputs, limit)
        split.append(len(pieces))
        return pieces

    monkeypatch.setattr(trainer_mod, "sample_pieces", counting)
    runs = {}
    for limit in (0, 64):
        split.clear()
        res = train(load_config(None, [f"model={model}", f"data={DATA}", f"output_dir={tmp_path / str(limit)}",
                                       "max_steps=3", "save_steps=0", "report_to=none", "batch_size=4",
                                       "logging_steps=1", "cutoff_len=128", "lora_dropout=0", "packing=true",
                                       f"gradient_checkpointing={checkpointing}", "learning_rate=1e-2",
                                       f"pass_tokens={limit}"]))
        log = [json.loads(x) for x in (res.output / "train_log.jsonl").read_text().splitlines()]
        runs[limit] = ([h["loss"] for h in log if "loss" in h], load_file(res.output / "adapter_model.safetensors"),
                       [h["grad_norm"] for h in log if "grad_norm" in h])
        said = capsys.readouterr().out
        assert ("passes of 64 to 128 tokens" in said) == (limit == 64)
        assert (max(split, default=1) > 1) == (limit == 64), split          # the second run really ran in pieces
    assert len(runs[64][0]) == 3
    assert runs[64][0] == pytest.approx(runs[0][0], abs=1e-5)
    assert runs[64][2] == pytest.approx(runs[0][2], rel=1e-5)          # the accumulated gradients
    one, pieces = runs[0][1], runs[64][1]
    assert one.keys() == pieces.keys()
    for name in one:   # AdamW moves near-zero gradients' weights by ~lr: last-bit differences show
        assert torch.allclose(one[name], pieces[name], atol=1e-4), name


def test_the_plan_counts_one_pass(tmp_path):
    """With pass_tokens set, a padding-free model's activations are those of one pass; a model
    that pads (or an unset limit, which a GPU run does not split) plans the whole batch."""
    from zhlora.models.tiny import make_tiny_model
    from zhlora.train.config import load_config
    from zhlora.train.plan import build_plan, format_plan, pass_tokens

    from conftest import ZH_TEXTS

    model = make_tiny_model(tmp_path / "llama", "llama", texts=ZH_TEXTS, hidden=64, layers=2)
    base = [f"model={model}", f"data={tmp_path / 'x.jsonl'}", "batch_size=8", "cutoff_len=512"]
    whole = build_plan(load_config(None, base))[1][0]
    cfg = load_config(None, [*base, "pass_tokens=1024"])
    shape, ests = build_plan(cfg)
    assert ests[0].activations == pytest.approx(whole.activations * (2 * 1024 + 512) / 4096)
    assert ests[0].weights == whole.weights
    assert "passes of under 2,048 tokens" in format_plan(cfg, shape, ests, [])
    assert pass_tokens(cfg, padding_free=False) == 8 * 512       # a model that pads: the whole batch
