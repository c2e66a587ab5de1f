"""Packing: the loss of a packed batch equals the token-weighted loss of the same samples
run one by one (fp32, within 1e-5) -- and restarting positions alone is NOT enough."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zhlora.conversation import Conversation
from zhlora.models.loading import load_model, load_tokenizer
from zhlora.templates import get_template
from zhlora.train.dataset import Collator, encode_all, pack_rows, single_rows

ROOT = Path(__file__).resolve().parents[1]


def summed_loss(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100, reduction="sum")


def test_packed_loss_equals_one_by_one(tiny_llama):
    tok = load_tokenizer(tiny_llama)
    model = load_model(tiny_llama, dtype="float32").eval()
    convs = [Conversation.from_pairs([("你好" * k, "世界" * (k + 1)), ("今天", "天气很好")][: 1 + k % 2])
             for k in range(1, 8)]
    enc, _ = encode_all(convs, get_template("alpaca"), tok, cutoff_len=256)
    rows = pack_rows(enc, cutoff_len=max(len(e) for e in enc) * 2)
    assert len(rows) < len(enc) and any(len(r.lengths) > 1 for r in rows)
    batch = Collator(tok.pad_token_id, packed=True)(
        [{"input_ids": r.input_ids, "labels": r.labels, "lengths": r.lengths} for r in rows])
    assert batch["attention_mask"].shape == (len(rows), 1, batch["input_ids"].shape[1],
                                             batch["input_ids"].shape[1])
    n_labels = (batch["labels"][:, 1:] != -100).sum()
    with torch.no_grad():
        packed = summed_loss(model(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits,
                             batch["labels"]) / n_labels
        total = sum(summed_loss(model(input_ids=torch.tensor([e.input_ids])).logits,
                                torch.tensor([e.labels])) for e in enc)
        count = sum(sum(1 for x in e.labels[1:] if x != -100) for e in enc)
        single = total / count
        # the model's own loss (labels passed) agrees as well
        own = model(**batch).loss
        leaky = summed_loss(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits,
                            batch["labels"]) / n_labels
    assert abs(packed.item() - single.item()) < 1e-5
    assert abs(own.item() - single.item()) < 1e-5
    assert abs(leaky.item() - single.item()) > 1e-5  # positions alone leak across samples


def test_padded_batch_equals_one_by_one(tiny_llama):
    tok = load_tokenizer(tiny_llama)
    model = load_model(tiny_llama, dtype="float32").eval()
    convs = [Conversation.from_pairs([("你好" * k, "世界" * k)]) for k in (1, 3, 6)]
    enc, _ = encode_all(convs, get_template("default"), tok, cutoff_len=256)
    rows = single_rows(enc)
    batch = Collator(tok.pad_token_id)([{"input_ids": r.input_ids, "labels": r.labels, "lengths": r.lengths}
                                        for r in rows])
    with torch.no_grad():
        padded = summed_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                             batch["labels"])
        one = sum(summed_loss(model(input_ids=torch.tensor([e.input_ids])).logits, torch.tensor([e.labels]))
                  for e in enc)
    assert abs(padded.item() - one.item()) < 1e-4


def test_pack_rows_is_first_fit_decreasing_and_whole():
    from zhlora.templates import Encoded

    enc = [Encoded([1] * n, [1] * n) for n in (5, 9, 3, 7, 2)]
    rows = pack_rows(enc, cutoff_len=10)
    assert sorted(n for r in rows for n in r.lengths) == [2, 3, 5, 7, 9]
    assert all(sum(r.lengths) <= 10 and len(r.input_ids) == sum(r.lengths) for r in rows)
    assert [r.lengths for r in rows] == [[9], [7, 3], [5, 2]]


def _packed_batch(tok, template="alpaca"):
    convs = [Conversation.from_pairs([("你好" * k, "世界" * (k + 1)), ("今天", "天气很好")][: 1 + k % 2])
             for k in range(1, 8)]
    enc, _ = encode_all(convs, get_template(template), tok, cutoff_len=256)
    rows = pack_rows(enc, cutoff_len=max(len(e) for e in enc) * 2)
    feats = [{"input_ids": r.input_ids, "labels": r.labels, "lengths": r.lengths} for r in rows]
    return enc, feats


@pytest.mark.parametrize("family", ["llama", "qwen2", "glm4"])
def test_segment_attention_equals_mask_and_one_by_one(tmp_path, family):
    """packed_attention=segments (no mask; attention split at the position restarts) gives the
    one-by-one loss and the same gradients as the 4D mask; the model's attention
    implementation is restored afterwards."""
    from zhlora.models.tiny import make_tiny_model
    from zhlora.train.packed_attention import ATTN_NAME, segment_attention, supports_segments

    from conftest import ZH_TEXTS

    path = make_tiny_model(tmp_path / family, family, texts=ZH_TEXTS, hidden=64, layers=2)
    tok, model = load_tokenizer(path), load_model(path, dtype="float32")
    assert supports_segments(model)
    enc, feats = _packed_batch(tok)
    masked = Collator(tok.pad_token_id, packed=True)(feats)
    plain = Collator(tok.pad_token_id, packed=True, block_mask=False)(feats)
    assert "attention_mask" not in plain and torch.equal(plain["position_ids"], masked["position_ids"])
    before = model.config._attn_implementation

    ref_loss, ref_grad = _loss_and_q_grad(model, masked)
    with segment_attention(model):
        assert model.config._attn_implementation == ATTN_NAME
        seg_loss, seg_grad = _loss_and_q_grad(model, plain)
        leaky = model(input_ids=plain["input_ids"], labels=plain["labels"]).loss.item()  # no restarts
    assert model.config._attn_implementation == before
    with torch.no_grad():
        total = sum(summed_loss(model(input_ids=torch.tensor([e.input_ids])).logits, torch.tensor([e.labels]))
                    for e in enc)
    single = total.item() / sum(sum(1 for x in e.labels[1:] if x != -100) for e in enc)
    assert abs(seg_loss - single) < 1e-5 and abs(ref_loss - single) < 1e-5
    assert (seg_grad - ref_grad).abs().max() <= 1e-5 * max(1.0, ref_grad.abs().max().item())
    assert abs(leaky - single) > 1e-5    # without restarted positions it is one long sample


def test_segment_bounds_from_restarted_positions():
    from zhlora.train.packed_attention import segment_bounds

    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0, 1, 2]])
    assert segment_bounds(pos) == [[(0, 3), (3, 5), (5, 9)], [(0, 6), (6, 9)]]


def test_training_with_segments_equals_training_with_the_mask(tiny_llama, tmp_path, monkeypatch):
    """Three packed steps (segments with gradient checkpointing, an eval split) give the same
    training and eval loss either way, and the segments run really attends per sample."""
    from zhlora.train import packed_attention as pa_mod
    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    calls = {"n": 0}
    real = pa_mod.packed_sdpa_forward

    def counting(*a, **kw):          # the real function, counted
        calls["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(pa_mod, "packed_sdpa_forward", counting)
    data = ROOT / "examples" / "data" / "zh_instruct_sample.jsonl"
    out, used = {}, {}
    for pa, gc in (("segments", "true"), ("mask", "false")):
        before = calls["n"]
        res = train(load_config(None, [f"model={tiny_llama}", f"data={data}", f"output_dir={tmp_path / pa}",
                                       "max_steps=3", "save_steps=0", "report_to=none", "packing=true",
                                       f"packed_attention={pa}", f"gradient_checkpointing={gc}", "batch_size=2",
                                       "cutoff_len=256", "eval_ratio=0.2", "learning_rate=1e-2",
                                       # no dropout: segments run as one flattened row (padding_free),
                                       # the mask on padded rows, so the same draws would hit other units
                                       "lora_dropout=0"]))
        out[pa] = (res.metrics["train_loss"], res.metrics["eval_loss"])
        used[pa] = calls["n"] - before
    assert used["segments"] > 0 and used["mask"] == 0, used
    assert out["segments"] == pytest.approx(out["mask"], abs=1e-5)


def test_segment_bounds_are_recomputed_when_the_positions_change_in_place():
    from zhlora.train.packed_attention import segment_bounds

    pos = torch.tensor([[0, 1, 2, 0, 1]])
    assert segment_bounds(pos) == [[(0, 3), (3, 5)]]
    pos[0, 3] = 3           # now one sample
    assert segment_bounds(pos) == [[(0, 5)]]


@pytest.mark.parametrize("family", ["llama", "qwen2", "glm4"])
def test_padding_free_batch_equals_the_padded_batch(tmp_path, family):
    """padding_free: the batch's samples as one unpadded row with attention per sample give the
    padded batch's loss and gradients, and compute no padding position."""
    from zhlora.models.tiny import make_tiny_model
    from zhlora.train.packed_attention import segment_attention

    from conftest import ZH_TEXTS

    path = make_tiny_model(tmp_path / family, family, texts=ZH_TEXTS, hidden=64, layers=2)
    tok, model = load_tokenizer(path), load_model(path, dtype="float32")
    convs = [Conversation.from_pairs([("你好" * k, "世界" * (3 * k))]) for k in (1, 4, 2, 7)]
    enc, _ = encode_all(convs, get_template("alpaca"), tok, cutoff_len=256)
    feats = [{"input_ids": r.input_ids, "labels": r.labels, "lengths": r.lengths} for r in single_rows(enc)]
    padded = Collator(tok.pad_token_id)(feats)
    flat = Collator(tok.pad_token_id, packed=True, block_mask=False, flatten=True)(feats)
    assert padded["input_ids"].numel() > flat["input_ids"].numel() == sum(len(e) for e in enc)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat

    ref_loss, ref_grad = _loss_and_q_grad(model, padded)
    with segment_attention(model):
        flat_loss, flat_grad = _loss_and_q_grad(model, flat)
    assert abs(flat_loss - ref_loss) < 1e-5
    assert (flat_grad - ref_grad).abs().max() <= 1e-5 * max(1.0, ref_grad.abs().max().item())


def test_segment_starts_are_never_predicted_across_samples():
    feats = [{"input_ids": [1, 2, 3], "labels": [5, 6, 7], "lengths": [3]},
             {"input_ids": [4, 5], "labels": [8, 9], "lengths": [2]}]
    flat = Collator(0, packed=True, block_mask=False, flatten=True)(feats)
    assert flat["labels"].tolist() == [[5, 6, 7, -100, 9]]
    assert flat["position_ids"].tolist() == [[0, 1, 2, 0, 1]]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packed_rows_as_one_row_equal_the_packed_batch(tmp_path, family):
    """padding_free with packing: the packed rows back to back as one row (no filler) give the
    packed batch's loss and gradients."""
    from zhlora.models.tiny import make_tiny_model
    from zhlora.train.packed_attention import segment_attention

    from conftest import ZH_TEXTS

    path = make_tiny_model(tmp_path / family, family, texts=ZH_TEXTS, hidden=64, layers=2)
    tok, model = load_tokenizer(path), load_model(path, dtype="float32")
    convs = [Conversation.from_pairs([("你好" * k, "世界" * (3 * k))]) for k in (1, 4, 2, 7, 3, 5)]
    enc, _ = encode_all(convs, get_template("alpaca"), tok, cutoff_len=256)
    rows = pack_rows(enc, 2 * max(len(e) for e in enc))
    feats = [{"input_ids": r.input_ids, "labels": r.labels, "lengths": r.lengths} for r in rows]
    assert len(feats) > 1 and any(len(f["lengths"]) > 1 for f in feats)
    packed = Collator(tok.pad_token_id, packed=True, block_mask=False)(feats)
    flat = Collator(tok.pad_token_id, packed=True, block_mask=False, flatten=True)(feats)
    assert packed["input_ids"].numel() > flat["input_ids"].numel() == sum(len(e) for e in enc)

    with segment_attention(model):
        ref_loss, ref_grad = _loss_and_q_grad(model, packed)
        flat_loss, flat_grad = _loss_and_q_grad(model, flat)
    assert abs(flat_loss - ref_loss) < 1e-5
    assert (flat_grad - ref_grad).abs().max() <= 1e-5 * max(1.0, ref_grad.abs().max().item())


@pytest.mark.parametrize("packing", ["false", "true"])
def test_training_padding_free_equals_padded_training(tiny_llama, tmp_path, packing, capsys):
    """Same steps, same train and eval loss (gradient checkpointing on, an eval split), with
    and without packing."""
    import json

    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    data = ROOT / "examples" / "data" / "zh_instruct_sample.jsonl"
    runs = {}
    for flag in ("true", "false"):
        res = train(load_config(None, [f"model={tiny_llama}", f"data={data}", f"output_dir={tmp_path / flag}",
                                       "max_steps=3", "save_steps=0", "report_to=none", "batch_size=4",
                                       "logging_steps=1", "cutoff_len=128", "eval_ratio=0.2", "lora_dropout=0",
                                       "gradient_checkpointing=true", "learning_rate=1e-2",
                                       f"padding_free={flag}", f"packing={packing}"]))
        log = [json.loads(x) for x in (res.output / "train_log.jsonl").read_text().splitlines()]
        runs[flag] = ([h["loss"] for h in log if "loss" in h], res.metrics["eval_loss"])
        flattened = "back to back as one row" in capsys.readouterr().out
        assert flattened == (flag == "true"), flag     # the two runs really batch differently
    assert len(runs["true"][0]) == 3
    assert runs["true"][0] == pytest.approx(runs["false"][0], abs=1e-5)
    assert runs["true"][1] == pytest.approx(runs["false"][1], abs=1e-5)


def test_padding_free_flattens_packed_and_unpacked_batches(tiny_llama, tmp_path):
    from zhlora.train.config import load_config
    from zhlora.train.sft import padding_free

    model = load_model(tiny_llama, dtype="float32")
    base = [f"model={tiny_llama}", f"data={tmp_path / 'x.jsonl'}"]
    for packing in ("true", "false"):
        assert padding_free(load_config(None, [*base, f"packing={packing}"]), model)
        assert not padding_free(load_config(None, [*base, f"packing={packing}", "padding_free=false"]), model)
    assert not padding_free(load_config(None, [*base, "packing=true", "packed_attention=mask"]), model)


def _loss_and_q_grad(model, batch) -> tuple[float, torch.Tensor]:
    """The model's own loss on `batch` and the gradient of the first q_proj weight."""
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()
