"""Trainable parameters and training-step time: P-Tuning v2 vs LoRA on one ChatGLM2-shaped model.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ptuning_vs_lora.py [--steps 7] [--batch 2] [--seq 256]

A random ChatGLM2-shaped model (hidden 512, 10 layers, 8 heads, 2 KV groups, ~30M parameters,
the tiny test tokenizer) is built once. Two copies are set up the way `zhlora train` sets them
up: LoRA r=8 on `query_key_value` (PEFT, the family's default preset) and P-Tuning v2 with
pre_seq_len 128 (frozen base, fp32 prefix encoder, no projection). One step is forward +
backward + AdamW step on the same batch (random ids, labels = ids); the steps of the two
methods are interleaved (LoRA, P-Tuning, LoRA, ...) and the median of `--steps` (after one
warm-up step each) is reported, with the ratio. fp32 on CPU.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

import zhlora  # noqa: F401
from zhlora.families import FAMILIES
from zhlora.models.chatglm.ptuning import new_prefix_encoder, trunk
from zhlora.models.chatglm.tiny import make_tiny_chatglm
from zhlora.train.config import LoraSettings
from zhlora.train.lora import apply_lora, lora_config

TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "assets" / "chatglm" / "v2"


def build(base: Path, method: str):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if method == "lora":
        model = apply_lora(model, lora_config(FAMILIES["chatglm"], model, LoraSettings(r=8, alpha=16, dropout=0.0)))
    else:
        model.requires_grad_(False)
        trunk(model).prefix_encoder = new_prefix_encoder(model, 128, False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-4), sum(p.numel() for p in params), \
        sum(p.numel() for p in model.parameters())


def step(model, opt, ids) -> float:
    start = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = make_tiny_chatglm(Path(tmp) / "base", "chatglm2", hidden=512, layers=10, heads=8, kv_groups=2,
                                 tokenizer_dir=TOKENIZER)
        runs = {m: build(base, m) for m in ("lora", "ptuning")}
    vocab = runs["lora"][0].get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    times = {m: [] for m in runs}
    for i in range(args.steps + 1):
        for m, (model, opt, _, _) in runs.items():
            t = step(model, opt, ids)
            if i:  # the first step of each is a warm-up
                times[m].append(t)
    print(f"base model: {runs['lora'][3] - runs['lora'][2]:,} parameters; batch {args.batch} x {args.seq} tokens; "
          f"median of {args.steps} interleaved steps; threads {torch.get_num_threads()}\n")
    print("| method | trainable params | step s (median) | vs LoRA |\n|---|---:|---:|---:|")
    lora_s = statistics.median(times["lora"])
    for m, label in (("lora", "LoRA r=8, query_key_value"), ("ptuning", "P-Tuning v2, pre_seq_len 128")):
        s = statistics.median(times[m])
        print(f"| {label} | {runs[m][2]:,} | {s:.3f} | {s / lora_s:.2f}x |")


if __name__ == "__main__":
    main()
