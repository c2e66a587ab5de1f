"""LoRA SFT throughput: label-bearing tokens per second, four batching strategies side by side.

    .venv/bin/python bench/train_throughput.py [--samples 96] [--repeats 3]

A ~30M-parameter LLaMA (random weights, hidden 512, 8 layers), a BELLE-like length mix
(many short samples, few long ones), LoRA r=8 on the family's default targets (q_proj, v_proj;
`--lora-target all` for all 7 linear layers), fp32 on CPU, one epoch
through `zhlora.train.sft.train` (the transformers Trainer). Strategies: padding to the
longest sample of each random batch (what ChatGLM-Tuning does), length-grouped batches,
packing kept apart by a 4D block mask (`packing_mask`), packing with attention per sample
(`packing_rows`, `packed_attention=segments` on (B, T) rows); `padding_free` (random batches,
no padding computed, zhlora's default without packing), `packing` (zhlora's default with
packing: the packed rows of a batch as one unpadded row, `padding_free=true`) and
`packing_full_logits` (packed rows with `label_only_loss=false`: logits at every position, the
packing before #18). `padded` is the old default in full:
padding and full logits. Runs are interleaved, `--repeats` times; medians are reported.
"Matmul fraction" = 4 x non-embedding params (+ lm_head) x real tokens / time, over the
machine's measured fp32 matmul rate (LoRA: forward 2 + activation-gradient 2 FLOPs per
weight; frozen weights get no weight gradient).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

CHARS = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说"
         "产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业"
         "本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比")
MODES = ("padded", "grouped", "padding_free", "packing_mask", "packing_full_logits", "packing_rows", "packing")


def length_mix(n: int, seed: int = 0) -> list[int]:
    """BELLE-like response lengths: 85% short (8-48), 12% medium (64-192), 3% long (300-480)."""
    rng = random.Random(seed)
    return [rng.randint(8, 48) if (r := rng.random()) < 0.85 else
            rng.randint(64, 192) if r < 0.97 else rng.randint(300, 480) for _ in range(n)]


def make_data(path: Path, n: int) -> None:
    rng = random.Random(1)
    with path.open("w", encoding="utf-8") as f:
        for L in length_mix(n):
            q = "".join(rng.choice(CHARS) for _ in range(rng.randint(6, 24)))
            a = "".join(rng.choice(CHARS) for _ in range(L))
            f.write(json.dumps({"instruction": q, "output": a}, ensure_ascii=False) + "\n")


def matmul_rate(rows: int = 1024, d: int = 512, d_ff: int = 1536, reps: int = 20) -> float:
    """fp32 FLOP/s of a matmul shaped like the model's MLP (best of 3 rounds)."""
    a, w = torch.randn(rows, d), torch.randn(d_ff, d)
    a @ w.T
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ w.T
        best = max(best, 2 * rows * d * d_ff * reps / (time.perf_counter() - t))
    return best


def run_once(model: Path, data: Path, out: Path, mode: str, batch: int, cutoff: int, dropout: float,
             target: str) -> dict:
    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    # packing: the same token positions per step as `batch` rows of 128 (2 rows of 512)
    packing = mode.startswith("packing")
    # padded: what ChatGLM-Tuning does (pads, logits at every position); packing_full_logits:
    # zhlora's packing with the model's own loss (label_only_loss=false), for the side-by-side
    full_logits = mode in ("padded", "packing_full_logits")
    rows = batch if not packing else max(1, batch * 128 // cutoff)
    over = [f"model={model}", f"data={data}", f"output_dir={out}", "epochs=1", "save_steps=0",
            "eval_ratio=0", "report_to=none", f"cutoff_len={cutoff}", f"lora_target={target}", "lora_r=8",
            "template=default", "logging_steps=1000", "overwrite=true", "warmup_ratio=0",
            f"packing={str(packing).lower()}", f"group_by_length={str(mode == 'grouped').lower()}",
            f"packed_attention={'mask' if mode == 'packing_mask' else 'segments'}",
            f"batch_size={rows}", f"lora_dropout={dropout}", f"label_only_loss={str(not full_logits).lower()}",
            f"padding_free={str(mode in ('padding_free', 'packing')).lower()}"]
    res = train(load_config(None, over))
    meta = json.loads((res.output / "zhlora_adapter.json").read_text())
    secs = res.metrics["train_runtime"]
    return {"seconds": secs, "label_tokens": meta["data_summary"]["label_tokens"],
            "tokens": meta["data_summary"]["tokens"], "steps": res.metrics["steps"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="rows per step when not packing")
    ap.add_argument("--cutoff", type=int, default=512)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--lora-target", default="default",
                    help="family preset (default: q_proj,v_proj; all: the 7 linear layers) or a comma list")
    ap.add_argument("--modes", default=",".join(MODES), help="comma list of " + ", ".join(MODES))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's choice); use 1 on a shared machine, where "
                         "two processes with 2 OpenMP threads each on 2 cores slow down ~5x")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from zhlora.models.loading import load_model
    from zhlora.models.tiny import make_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="zhlora-bench-"))
    make_data(tmp / "data.jsonl", args.samples)
    model = make_tiny_model(tmp / "model", "llama", texts=[CHARS], hidden=512, layers=8, heads=8, kv_heads=8)
    m = load_model(model, dtype="float32")
    total = sum(p.numel() for p in m.parameters())
    per_token = total - m.get_input_embeddings().weight.numel()  # lm_head is a matmul per token
    del m
    rate = matmul_rate()
    print(f"model {total / 1e6:.1f}M params, {per_token / 1e6:.1f}M used per token; fp32 matmul "
          f"{rate / 1e9:.1f} GFLOP/s; torch threads {torch.get_num_threads()}; LoRA r=8 on {args.lora_target}, "
          f"dropout {args.lora_dropout}")
    modes = [m for m in MODES if m in args.modes.split(",")]
    results = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in modes:
            results[mode].append(run_once(model, tmp / "data.jsonl", tmp / f"out-{mode}", mode, args.batch,
                                          args.cutoff, args.lora_dropout, args.lora_target))
            print(f"repeat {r + 1} {mode}: {results[mode][-1]}", flush=True)
    print("\n| strategy | label tok/s (median) | vs padded | matmul fraction |\n|---|---|---|---|")
    base = None
    for mode in modes:
        secs = statistics.median(x["seconds"] for x in results[mode])
        x = results[mode][0]
        tps = x["label_tokens"] / secs
        base = base or tps
        frac = 4 * per_token * x["tokens"] / secs / rate
        print(f"| {mode} | {tps:.0f} | {tps / base:.2f}x | {100 * frac:.0f}% |")


if __name__ == "__main__":
    main()
