"""Padding-free batches in passes (`pass_tokens`): one training step of a packed batch as one
forward/backward or as pieces cut at sample starts, side by side.

    OMP_NUM_THREADS=2 .venv/bin/python bench/passes.py [--model DIR] [--repeats 7] [--limits 0,2048,1536,1024,768]
        [--checkpointing]

The batches: bench/checkpointing.py's (8 packed rows of ~508 tokens, samples of 30-200
tokens, a third of each prompt) joined into one padding-free row, as training runs it, and an
unpacked batch (8 samples of 60-512 tokens). LoRA r8 on all 7 linears, fp32, the label-only
loss; one step = every piece's forward + loss + backward, each loss divided by the batch's
label count (what `zhlora train` does, train/trainer.py). Limits interleaved step by step,
`--repeats` rounds after one warm-up; median step time and its ratio to one pass; the losses
must agree to 1e-5.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

from checkpointing import batch as packed_batch
from checkpointing import build, default_model


def unpacked_batch(vocab: int, seed: int = 1) -> dict:
    from zhlora.train.dataset import Collator

    rng = random.Random(seed)
    feats = []
    for _ in range(8):
        n = rng.randint(60, 512)
        p = n // 3
        feats.append({"input_ids": [rng.randrange(3, vocab) for _ in range(n)],
                      "labels": [-100] * p + [rng.randrange(3, vocab) for _ in range(n - p)], "lengths": [n]})
    return Collator(0, packed=True, block_mask=False, flatten=True)(feats)


def step(model, pieces: list[dict], n_labels: int) -> float:
    from zhlora.train.loss import capture_head_input, label_only_loss, output_head

    model.zero_grad()
    head, total = output_head(model), 0.0
    for p in pieces:
        with capture_head_input(head) as seen:
            model(**{k: v for k, v in p.items() if k != "labels"})
        loss = label_only_loss(seen[-1], p["labels"], head, n_labels)
        loss.backward()
        total += loss.item()
    return total


def main() -> None:
    from zhlora.train.packed_attention import segment_attention
    from zhlora.train.trainer import sample_pieces

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--limits", default="0,2048,1536,1024,768")
    ap.add_argument("--checkpointing", action="store_true", help="gradient_checkpointing=true")
    args = ap.parse_args()
    path = args.model or default_model()
    model = build(path, "zhlora" if args.checkpointing else "none")
    vocab = model.get_input_embeddings().num_embeddings
    limits = [int(x) for x in args.limits.split(",")]
    batches = {"packed": packed_batch(vocab, flatten=True), "unpacked": unpacked_batch(vocab)}
    print(f"model {path}, {torch.get_num_threads()} thread(s), checkpointing {args.checkpointing}, "
          f"{args.repeats} interleaved rounds")
    print("| batch | tokens | pass_tokens | passes | step s median | vs one pass | loss |")
    print("|---|---:|---:|---|---:|---:|---:|")
    with segment_attention(model):
        for name, b in batches.items():
            n = int((b["labels"][:, 1:] != -100).sum())
            runs = {lim: sample_pieces(b, lim) for lim in limits}
            losses = {lim: step(model, p, n) for lim, p in runs.items()}   # warm-up
            times: dict = {lim: [] for lim in limits}
            for _ in range(args.repeats):
                for lim, p in runs.items():
                    t = time.perf_counter()
                    step(model, p, n)
                    times[lim].append(time.perf_counter() - t)
            one = statistics.median(times[limits[0]])
            for lim in limits:
                med = statistics.median(times[lim])
                sizes = "+".join(str(p["input_ids"].shape[1]) for p in runs[lim])
                assert abs(losses[lim] - losses[limits[0]]) < 1e-5, (lim, losses)
                print(f"| {name} | {b['input_ids'].shape[1]} | {lim or 'none'} | {sizes} | {med:.3f} | "
                      f"{med / one:.2f} | {losses[lim]:.6f} |")


if __name__ == "__main__":
    main()
