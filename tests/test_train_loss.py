"""label_only_loss (zhlora.train.loss): the LM head and cross-entropy at label positions only,
in chunks, equal the model's own full loss and its gradients (fp32, within 1e-5) for every
family, padded and packed, with and without gradient checkpointing, a trained head
(modules_to_save) included; and the Trainer reports the same train and eval loss either way."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zhlora.data import Conversation
from zhlora.families import family_for_config, read_config
from zhlora.models.loading import load_model, load_tokenizer
from zhlora.templates import get_template
from zhlora.train.dataset import Collator, encode_all, pack_rows, single_rows
from zhlora.train.config import LoraSettings
from zhlora.train.lora import apply_lora, lora_config
from zhlora.train.loss import capture_head_input, label_only_loss, output_head

from conftest import ZH_TEXTS

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets" / "chatglm"
FAMILIES = ["llama", "qwen2", "glm4", "chatglm", "chatglm2"]


def make_bases(root: Path, layers: int) -> dict:
    """A tiny random base of every family (transformers' with `layers` layers)."""
    from zhlora.models.chatglm.tiny import make_tiny_chatglm
    from zhlora.models.tiny import make_tiny_model

    out = {f: make_tiny_model(root / f, f, texts=ZH_TEXTS, hidden=32, layers=layers) for f in FAMILIES[:3]}
    out["chatglm"] = make_tiny_chatglm(root / "chatglm", "chatglm", tokenizer_dir=ASSETS / "v1", seed=1)
    out["chatglm2"] = make_tiny_chatglm(root / "chatglm2", "chatglm2", tokenizer_dir=ASSETS / "v2", seed=1)
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict:
    return make_bases(tmp_path_factory.mktemp("loss_bases"), layers=2)


def _batch(path, family, packed: bool) -> dict:
    tok = load_tokenizer(path)
    template = get_template(family.default_template(read_config(path)))
    convs = [Conversation.from_pairs([("你好" * k, "世界" * (k + 1)), ("今天", "天气很好")][: 1 + k % 2])
             for k in range(1, 7)]
    enc, _ = encode_all(convs, template, tok, cutoff_len=256, progress=False)
    rows = pack_rows(enc, max(len(e) for e in enc) * 2) if packed else single_rows(enc)
    feats = [{"input_ids": r.input_ids, "labels": r.labels, "lengths": r.lengths} for r in rows]
    return Collator(tok.pad_token_id, packed=packed)(feats)


def _model(path, family, gc: bool, train_head: bool):
    model = load_model(path, dtype="float32")
    head = [family.embedding_modules[-1]] if train_head else None
    lora = LoraSettings(r=4, alpha=8, dropout=0.0, target="all")
    model = apply_lora(model, lora_config(family, model, lora, tuple(head or ())), gc)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:    # LoRA B starts at zero: make every trainable weight matter
            p.data.normal_(0, 0.05)
    return model.train()


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("gc,train_head", [(False, False), (True, False), (False, True)])
def test_label_only_loss_equals_the_full_loss_and_gradients(bases, name, packed, gc, train_head):
    path = bases[name]
    family = family_for_config(read_config(path), path)
    if packed and not family.packing:
        pytest.skip(f"{name}: packing unsupported")
    batch = _batch(path, family, packed)
    labels = batch["labels"]
    assert (labels[:, 1:] == -100).any() and (labels[:, 1:] != -100).any()
    model = _model(path, family, gc, train_head)
    for n_items in (None, 7):
        extra = {} if n_items is None else {"num_items_in_batch": n_items}
        model.zero_grad()
        ref = model(**batch, **extra).loss
        ref.backward()
        ref_grads = _grads(model)

        model.zero_grad()
        head = output_head(model)
        with capture_head_input(head) as seen:
            out = model(**{k: v for k, v in batch.items() if k != "labels"})
        assert out.logits.shape[1] == 0            # the head ran on no position
        loss = label_only_loss(seen[-1], labels, head, n_items, chunk=5)   # several chunks
        loss.backward()
        assert loss.item() == pytest.approx(ref.item(), abs=1e-5 * max(1.0, ref.item()))
        grads = _grads(model)
        assert grads.keys() == ref_grads.keys()
        if train_head:
            assert any("modules_to_save" in k for k in grads)
        for k, g in grads.items():
            scale = max(1.0, ref_grads[k].abs().max().item())
            assert (g - ref_grads[k]).abs().max().item() <= 1e-5 * scale, k
        assert any(g.abs().max() > 0 for g in grads.values())


def test_no_grad_and_chunk_sizes_agree(bases):
    path = bases["llama"]
    family = family_for_config(read_config(path), path)
    batch = _batch(path, family, packed=False)
    model = _model(path, family, gc=False, train_head=False).eval()
    head = output_head(model)
    with torch.no_grad():
        ref = model(**batch).loss.item()
        with capture_head_input(head) as seen:
            model(**{k: v for k, v in batch.items() if k != "labels"})
        got = [label_only_loss(seen[-1], batch["labels"], head, chunk=c).item() for c in (1, 3, 10_000)]
    assert got == pytest.approx([ref] * 3, abs=1e-5)
    empty = torch.full_like(batch["labels"], -100)
    assert label_only_loss(seen[-1], empty, head).item() == 0.0


def test_trainer_reports_the_same_train_and_eval_loss(tiny_llama, tmp_path, monkeypatch):
    """Three steps with gradient accumulation (num_items_in_batch) and an eval split: the
    label-only Trainer logs the same losses as the stock one, step by step, and it is the one
    that runs by default."""
    from zhlora.train import trainer as trainer_mod
    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    calls = {"n": 0}
    real = trainer_mod.label_only_loss

    def counting(*a, **kw):          # the real function, counted
        calls["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(trainer_mod, "label_only_loss", counting)

    data = ROOT / "examples" / "data" / "zh_instruct_sample.jsonl"
    runs = {}
    for flag in ("true", "false"):
        res = train(load_config(None, [f"model={tiny_llama}", f"data={data}", f"output_dir={tmp_path / flag}",
                                       "max_steps=3", "save_steps=0", "report_to=none", "batch_size=2",
                                       "grad_accum=2", "logging_steps=1", "cutoff_len=128", "eval_ratio=0.2",
                                       "eval_steps=2", "learning_rate=1e-2", "lora_dropout=0",
                                       f"label_only_loss={flag}"]))
        log = [json.loads(x) for x in (res.output / "train_log.jsonl").read_text().splitlines()]
        runs[flag] = dict(res.metrics, calls=calls["n"], steps=[(h["step"], h.get("loss"), h.get("eval_loss")) for h in log
                                              if "loss" in h or "eval_loss" in h])
    from zhlora.train.config import TrainConfig

    assert TrainConfig().label_only_loss and TrainConfig().padding_free      # both on by default
    assert runs["true"]["calls"] > 0 and runs["false"]["calls"] == runs["true"]["calls"]   # false adds none
    assert len(runs["true"]["steps"]) >= 4
    for a, b in zip(runs["true"]["steps"], runs["false"]["steps"], strict=True):
        assert a[0] == b[0] and a[1:] == pytest.approx(b[1:], abs=1e-5)
    assert runs["true"]["train_loss"] == pytest.approx(runs["false"]["train_loss"], abs=1e-5)
    assert runs["true"]["eval_loss"] == pytest.approx(runs["false"]["eval_loss"], abs=1e-5)
