"""Training-side behaviour of the native ChatGLM models: loss, LoRA, gradient checkpointing,
packing (v2/3/4), batched left-padded generation, P-Tuning v2, and saving THUDM's layout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DynamicCache

import zhlora  # noqa: F401
from zhlora.errors import ZhloraError
from zhlora.models.chatglm import ChatGLMConfig

PARITY = Path(__file__).resolve().parents[1].parent / "shared" / "parity"


def _load(name):
    if not (PARITY / name / "checkpoint").is_dir():
        pytest.skip(f"{PARITY / name} not present")
    return AutoModelForCausalLM.from_pretrained(PARITY / name / "checkpoint", dtype=torch.float32)


def _batch(model, seed=0, T=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 200, (2, T), generator=g)
    if model.spec.version == 1:  # v1 rows need [gMASK] <sop>
        ids[:, 5], ids[:, 6] = model.spec.gmask_token_id, model.spec.bos_token_id
    return ids


@pytest.mark.parametrize("name", ["chatglm", "chatglm2"])
def test_chatglm_model_loss_is_shifted_cross_entropy(name):
    model = _load(name).eval()
    ids = _batch(model)
    labels = ids.clone()
    labels[:, :7] = -100
    out = model(ids, labels=labels)
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), labels[:, 1:].reshape(-1))
    assert abs(out.loss.item() - want.item()) < 1e-6


@pytest.mark.parametrize("name", ["chatglm", "chatglm2"])
def test_chatglm_model_gradient_checkpointing_same_grads(name):
    model = _load(name).train()
    ids = _batch(model)

    def grads():
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt = grads()
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    assert max((plain[k] - ckpt[k]).abs().max().item() for k in plain) < 1e-6


@pytest.mark.parametrize("name", ["chatglm", "chatglm3"])
def test_chatglm_model_lora_trains_and_keeps_output_layer_frozen(name):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_load(name), LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"],
                                                   lora_dropout=0.0))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    ids = _batch(model.base_model.model)
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.01 and losses == sorted(losses, reverse=True), losses


@pytest.mark.parametrize("name", ["chatglm2", "chatglm3"])
def test_chatglm_model_packed_loss_equals_per_sample_loss(name):
    model = _load(name).eval()
    a, b = _batch(model, 1, 7)[0], _batch(model, 2, 5)[0]
    packed = torch.cat([a, b])[None]
    allowed = torch.zeros(12, 12, dtype=torch.bool)
    allowed[:7, :7] = torch.tril(torch.ones(7, 7, dtype=torch.bool))
    allowed[7:, 7:] = torch.tril(torch.ones(5, 5, dtype=torch.bool))
    labels = packed.clone()
    labels[0, 7] = -100  # first token of sample b is not predicted from sample a
    with torch.no_grad():
        out = model(packed, attention_mask=allowed[None, None], position_ids=torch.cat(
            [torch.arange(7), torch.arange(5)])[None], labels=labels)
        la, lb = model(a[None], labels=a[None]), model(b[None], labels=b[None])
        sep = [model(a[None]).logits[0], model(b[None]).logits[0]]
    assert (out.logits[0] - torch.cat(sep)).abs().max().item() < 1e-5
    want = (la.loss * 6 + lb.loss * 4) / 10
    assert abs(out.loss.item() - want.item()) < 1e-5


def test_chatglm_model_v1_refuses_packed_mask():
    model = _load("chatglm")
    ids = _batch(model)
    with pytest.raises(ZhloraError, match="packing"):
        model(ids, attention_mask=torch.ones(2, 1, 12, 12, dtype=torch.bool))


@pytest.mark.parametrize("name", ["chatglm", "chatglm2"])
def test_chatglm_model_left_padded_batch_generate_matches_single(name):
    model = _load(name).eval()
    rows = [_batch(model, 3, 10)[0], _batch(model, 4, 10)[1][2:]]  # lengths 10 and 8
    singles = [model.generate(r[None], do_sample=False, max_new_tokens=5)[0, len(r):] for r in rows]
    pad = model.config.pad_token_id
    ids = torch.full((2, 10), pad)
    mask = torch.zeros(2, 10, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, 10 - len(r):], mask[i, 10 - len(r):] = r, 1
    batch = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=5)
    assert batch[0, 10:].tolist() == singles[0].tolist()
    assert batch[1, 10:].tolist() == singles[1].tolist()
    sampled = model.generate(ids, attention_mask=mask, do_sample=True, top_p=0.9, max_new_tokens=4)
    assert sampled.shape == (2, 14)


@pytest.mark.parametrize("name", ["chatglm", "chatglm2"])
def test_chatglm_model_saves_thudm_layout(tmp_path, name):
    model = _load(name).eval()
    model.save_pretrained(tmp_path)
    saved, original = load_file(tmp_path / "model.safetensors"), load_file(PARITY / name / "checkpoint" /
                                                                            "model.safetensors")
    assert set(saved) == {k for k in original if not k.endswith("inv_freq")}
    cfg = json.loads((tmp_path / "config.json").read_text())
    orig = json.loads((PARITY / name / "checkpoint" / "config.json").read_text())
    assert cfg["architectures"] == ["ChatGLMForConditionalGeneration"] and cfg["auto_map"] == orig["auto_map"]
    assert cfg["torch_dtype"] == "float32"
    assert {k: cfg.get(k) for k in orig if k not in ("transformers_version",)} == \
        {k: v for k, v in orig.items() if k != "transformers_version"}
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = _batch(model)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


@pytest.mark.parametrize("base,projection", [("chatglm", False), ("chatglm3", True)])
def test_chatglm_model_ptuning_v2_cache_matches_full_forward(base, projection):
    if not (PARITY / base / "checkpoint" / "config.json").is_file():
        pytest.skip(f"{PARITY / base} not present")
    cfg = json.loads((PARITY / base / "checkpoint" / "config.json").read_text())
    cfg.update(pre_seq_len=4, prefix_projection=projection)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(ChatGLMConfig(**cfg), dtype=torch.float32).eval()
    assert model.transformer.prefix_encoder is not None
    ids = _batch(model, 5, 10)[:1]
    with torch.no_grad():
        full = model(ids).logits[0]
        first = model(**model.prepare_inputs_for_generation(
            ids[:, :9], cache=DynamicCache(), use_cache=True, position_ids=torch.arange(9)[None]))
        step = model(**model.prepare_inputs_for_generation(
            ids, cache=first.cache, use_cache=True, next_sequence_length=1, position_ids=torch.arange(10)[None]))
        model.transformer.prefix_encoder = None
        plain = model(ids).logits[0]
    assert (first.logits[0] - full[:9]).abs().max().item() < 1e-5
    assert (step.logits[0, -1] - full[-1]).abs().max().item() < 1e-5
    assert (full - plain).abs().max().item() > 1e-4  # the prefix changes the output


def test_chatglm_model_tiny_glm4_folder_chat_roundtrip(tmp_path):
    """A GLM-4 folder in the original chatglm format: tokenizer + glm4 template + rope_ratio."""
    pytest.importorskip("tiktoken")
    from zhlora.conversation import Conversation
    from zhlora.families import family_of
    from zhlora.models.chatglm.tiny import make_tiny_chatglm
    from zhlora.models.loading import load_model, load_tokenizer
    from zhlora.templates import get_template

    assets = Path(__file__).parent / "assets" / "chatglm" / "glm4"
    folder = make_tiny_chatglm(tmp_path / "glm4", "glm4", tokenizer_dir=assets)
    tok, model = load_tokenizer(folder), load_model(folder, dtype="float32").eval()
    template = get_template(family_of(folder).default_template(json.loads((folder / "config.json").read_text())))
    assert template.name == "glm4" and model.spec.rope_ratio == 500
    prompt = torch.tensor([template.encode_prompt(Conversation.from_pairs([("你好", None)]), tok)])
    out = model.generate(prompt, do_sample=False, max_new_tokens=4, eos_token_id=template.stop_token_ids(tok))
    assert out.shape[1] > prompt.shape[1]
    with torch.no_grad():
        base = model(prompt).logits
        model.config.rope_ratio = 1  # spec is read from the config: base 10000 instead of 5e6
        assert (model(prompt).logits - base).abs().max().item() > 1e-6
