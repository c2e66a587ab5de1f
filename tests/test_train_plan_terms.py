"""The memory plan's terms against what really happens: the bytes autograd keeps per decoder
layer (measured with saved-tensor hooks on a tiny LLaMA, fp32 and bf16 autocast as on a GPU),
the label-only chunked loss, and QLoRA's fp32 upcast of the parameters that are not 4-bit."""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
import torch

from zhlora.families import family_of
from zhlora.models.tiny import make_tiny_model
from zhlora.train.config import load_config
from zhlora.train.plan import (
    NF4_BYTES,
    activation_bytes,
    build_plan,
    estimate,
    layer_activation_bytes,
    logits_bytes,
    loss_chunk_rows,
    meta_model,
    read_shape,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"
DATA = str(ROOT / "examples" / "data" / "zh_instruct_sample.jsonl")


def _cfg(model, *extra):
    return load_config(None, [f"model={model}", f"data={DATA}", "cutoff_len=1024", "batch_size=4",
                              "packing=true", "lora_dropout=0", *extra])


@pytest.fixture(scope="module")
def gqa_llama(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("plan") / "m", "llama", hidden=64, layers=3, heads=4, kv_heads=2)


def kept_bytes_per_layer_and_token(model_dir: Path, cfg, dtype, autocast: bool, tokens: int = 256) -> float:
    """What autograd saves for one decoder layer, per token: (3 layers - 1 layer) / 2,
    distinct storages, the model's parameters left out."""
    from transformers import AutoModelForCausalLM

    from zhlora.train.lora import apply_lora, lora_config
    from zhlora.train.packed_attention import segment_attention

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    model = apply_lora(model, lora_config(family_of(model_dir), model, cfg.lora))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    inner, layers = model.get_base_model().model, model.get_base_model().model.layers
    ids, pos = torch.randint(3, 60, (1, tokens)), torch.arange(tokens)[None]
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    kept = {}
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with segment_attention(model), ctx:
        for n in (1, 3):
            inner.layers, seen = layers[:n], {}
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                inner(input_ids=ids, position_ids=pos)
            kept[n] = sum(v for k, v in seen.items() if k not in params)
    inner.layers = layers
    return (kept[3] - kept[1]) / 2 / tokens


@pytest.mark.parametrize(("target", "dtype", "autocast"), [
    ("all", torch.float32, False), ("default", torch.float32, False),   # q,v share one input
    ("all", torch.bfloat16, True), ("default", torch.bfloat16, True),   # a copy per wrapped linear
])
def test_layer_activation_bytes_match_what_autograd_keeps(gqa_llama, target, dtype, autocast):
    cfg = _cfg(gqa_llama, f"lora_target={target}", "lora_r=2")
    shape = build_plan(cfg)[0]
    measured = kept_bytes_per_layer_and_token(gqa_llama, cfg, dtype, autocast)
    # bf16: autocast's per-use casts of the LoRA weights add a few bytes a token at T=256
    assert layer_activation_bytes(shape, 0.0, dtype.itemsize) == pytest.approx(measured, rel=0.03)


def test_frozen_linears_keep_no_input_so_fewer_targets_keep_less(gqa_llama):
    all_ = build_plan(_cfg(gqa_llama, "lora_target=all"))[0]
    qv = build_plan(_cfg(gqa_llama, "lora_target=default"))[0]
    assert (qv.lora_inputs, qv.lora_shared_inputs) == (2 * 64, 64)          # q and v read one tensor
    assert (all_.lora_inputs, all_.lora_shared_inputs) == (6 * 64 + 192, 3 * 64 + 192)
    assert layer_activation_bytes(qv, 0, 4) < layer_activation_bytes(all_, 0, 4)
    # bf16: the shared input becomes one copy per wrapped linear
    assert layer_activation_bytes(qv, 0, 2) - layer_activation_bytes(dataclasses.replace(qv, lora_inputs=64), 0, 2) \
        == 64 * 2


def test_label_only_loss_term_scales_with_label_tokens_up_to_one_chunk():
    shape = read_shape(meta_model(CONFIGS / "qwen2.5-7b-instruct"))
    V, H, chunk = shape.vocab, shape.hidden, loss_chunk_rows(shape.vocab)
    assert chunk == (1 << 25) // V                                          # 220 rows of 152064
    few = logits_bytes(shape, 4096, 2, label_tokens=100)
    assert few == 100 * V * 8 + 2 * 100 * H * 2                             # below one chunk: per label
    many = logits_bytes(shape, 4096, 2, label_tokens=4000)
    assert many == chunk * V * 8 + 2 * 4000 * H * 2                          # one chunk at a time
    assert logits_bytes(shape, 4096, 2) == logits_bytes(shape, 4096, 2, label_tokens=4096)  # default: all
    full = logits_bytes(shape, 4096, 2, label_only=False)                   # label_only_loss=false
    assert full == 4096 * V * 10 and many < full / 15
    cfg = _cfg(CONFIGS / "qwen2.5-7b-instruct", "label_only_loss=false")
    assert estimate(shape, cfg, 2, quantized=False).logits == full


def test_qlora_counts_the_fp32_upcast_and_checkpointing():
    cfg = _cfg(CONFIGS / "qwen2.5-7b-instruct", "lora_target=all")
    shape, (lora, qlora) = build_plan(cfg)
    others = shape.total - shape.quantizable                                # embeddings, norms, lm_head
    assert qlora.weights == pytest.approx(shape.quantizable * NF4_BYTES + others * 4 + shape.largest_linear * 2)
    assert others > 1.0e9                                                   # untied 152064 x 3584 twice
    # training turns checkpointing on for QLoRA; the residual stream is fp32 after the upcast
    assert qlora.activations == activation_bytes(shape, 4096, cfg, 2, checkpointing=True, residual_bytes=4)
    assert qlora.activations < lora.activations / 5


def test_prepare_model_for_kbit_training_upcasts_what_the_plan_counts(gqa_llama):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install 'zhlora[qlora]')")
    from zhlora.models.loading import load_model
    from zhlora.train.lora import apply_lora, lora_config

    shape = read_shape(meta_model(gqa_llama))
    model = load_model(gqa_llama, dtype="bfloat16", device="cpu", quantization="4bit")
    cfg = _cfg(gqa_llama, "lora_target=all")
    model = apply_lora(model, lora_config(family_of(gqa_llama), model, cfg.lora), True, kbit=True)
    base = [(n, p) for n, p in model.named_parameters() if "lora_" not in n]
    four_bit = [p for _, p in base if type(p).__name__ == "Params4bit"]
    upcast = [p for _, p in base if type(p).__name__ != "Params4bit"]
    assert sum(2 * p.numel() for p in four_bit) == shape.quantizable           # packed two a byte
    assert all(p.dtype == torch.float32 for p in upcast)
    assert sum(p.numel() for p in upcast) == shape.total - shape.quantizable
