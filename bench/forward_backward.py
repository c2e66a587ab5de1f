"""One LoRA forward + backward outside the Trainer: where the time of a training step goes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/forward_backward.py [--threads 1]

Same ~27M LLaMA as bench/train_throughput.py. For 1024 token positions it times (best of 3)
a packed 2 x 512 batch (8 samples of 64 per row) with the 4D block mask, the same with
attention per sample (`packed_attention=segments`), the same rows with a plain 2D mask (one
long sample), and 8 x 128 rows, for LoRA dropout 0.05 and 0, and prints each as a fraction of
an MLP-shaped fp32 matmul.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(model_dir: str, dropout: float):
    from peft import LoraConfig, get_peft_model

    from zhlora.models.loading import load_model

    model = load_model(model_dir, dtype="float32")
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=dropout))


def step_seconds(model, rows: int, length: int, mask: str) -> float:
    import contextlib

    from zhlora.train.dataset import block_causal_mask, position_ids_for
    from zhlora.train.packed_attention import segment_attention

    ids = torch.randint(5, 50, (rows, length))
    kw = {"attention_mask": torch.ones(rows, length, dtype=torch.long)}
    lengths = [[length // 8] * 8] * rows
    if mask == "4d":
        kw = {"attention_mask": block_causal_mask(lengths, length), "position_ids": position_ids_for(lengths, length)}
    elif mask == "segments":
        kw = {"position_ids": position_ids_for(lengths, length)}
    best = float("inf")
    with segment_attention(model) if mask == "segments" else contextlib.nullcontext():
        for _ in range(3):
            t = time.perf_counter()
            model(input_ids=ids, labels=ids, **kw).loss.backward()
            best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from zhlora.models.tiny import make_tiny_model

    d = make_tiny_model(tempfile.mkdtemp(), "llama", texts=["的一是在不了有和人这中大为"], hidden=512, layers=8,
                        heads=8, kv_heads=8)
    a, w = torch.randn(1024, 512), torch.randn(1536, 512)
    t = time.perf_counter()
    for _ in range(20):
        a @ w.T
    rate = 2 * 1024 * 512 * 1536 * 20 / (time.perf_counter() - t)
    print(f"matmul {rate / 1e9:.1f} GFLOP/s, threads {args.threads}\n| dropout | batch | seconds | fraction |\n|---|---|---|---|")
    for dropout in (0.05, 0.0):
        model = build(str(d), dropout)
        per_token = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lora" not in n)
        for rows, length, mask in ((2, 512, "4d"), (2, 512, "segments"), (2, 512, "2d"), (8, 128, "2d")):
            s = step_seconds(model, rows, length, mask)
            print(f"| {dropout} | {rows}x{length} {mask} | {s:.2f} | {4 * per_token * rows * length / s / rate:.0%} |")


if __name__ == "__main__":
    main()
