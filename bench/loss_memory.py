"""Peak memory of LoRA SFT at a 152k vocabulary: full logits vs `label_only_loss` (the default).

    OMP_NUM_THREADS=1 .venv/bin/python bench/loss_memory.py [--repeats 2] [--steps 2]

A tiny Qwen2-shaped model with Qwen2's real vocabulary size (151,936; hidden 128, 2 layers,
random weights, untied head), packed rows of `--cutoff` (2048) tokens, batch 1, LoRA r=8 on all
7 linear layers, fp32 on CPU, through `zhlora.train.sft.train`. Each run is its own process;
"peak" is the process's high-water RSS (VmHWM) after training, "over start" subtracts the RSS
when training began (model, data and optimizer set up), so it is what the steps themselves
add. Full logits at 2048 tokens x 151,936 are 1.24 GB in fp32, and the loss makes several
such tensors (log-softmax, its gradient).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

VOCAB = 151936
CHARS = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说"
         "产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业")


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    """One training run in this process; prints a JSON line with the memory figures."""
    from transformers import TrainerCallback

    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    start = {}

    class AtStart(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            start["rss"] = rss_mb("VmRSS")

    over = [f"model={args.model}", f"data={args.data}", f"output_dir={args.out}", f"max_steps={args.steps}",
            "save_steps=0", "eval_ratio=0", "report_to=none", f"cutoff_len={args.cutoff}", "packing=true",
            "batch_size=1", "lora_target=all", "lora_dropout=0", "logging_steps=1000", "overwrite=true",
            f"label_only_loss={args.label_only}", f"gradient_checkpointing={args.gc}"]
    res = train(load_config(None, over), callbacks=[AtStart()])
    peak = rss_mb("VmHWM")
    print(json.dumps({"peak_mb": peak, "start_mb": start["rss"], "over_start_mb": peak - start["rss"],
                      "seconds": res.metrics["train_runtime"], "loss": res.metrics["train_loss"]}))


def prepare(tmp: Path, cutoff: int) -> tuple[Path, Path]:
    from zhlora.models.tiny import make_tiny_model

    rng = random.Random(0)
    with (tmp / "data.jsonl").open("w", encoding="utf-8") as f:
        for _ in range(64):   # ~250-token samples, packed into full rows
            q = "".join(rng.choice(CHARS) for _ in range(rng.randint(20, 60)))
            a = "".join(rng.choice(CHARS) for _ in range(rng.randint(150, 250)))
            f.write(json.dumps({"instruction": q, "output": a}, ensure_ascii=False) + "\n")
    model = make_tiny_model(tmp / "model", "qwen2", texts=[CHARS], hidden=128, layers=2, heads=4, kv_heads=2,
                            vocab_size=VOCAB)
    return model, tmp / "data.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--cutoff", type=int, default=2048)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for k in ("model", "data", "out", "label-only", "gc"):
        ap.add_argument(f"--{k}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    tmp = Path(tempfile.mkdtemp(prefix="zhlora-lossmem-"))
    model, data = prepare(tmp, args.cutoff)
    runs: dict = {}
    for r in range(args.repeats):
        for gc in ("false", "true"):
            for label_only in ("false", "true"):
                cmd = [sys.executable, __file__, "--child", f"--model={model}", f"--data={data}",
                       f"--out={tmp / 'out'}", f"--label-only={label_only}", f"--gc={gc}",
                       f"--steps={args.steps}", f"--cutoff={args.cutoff}"]
                line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                runs.setdefault((gc, label_only), []).append(json.loads(line))
                print(f"round {r + 1} gc={gc} label_only_loss={label_only}: {line}", flush=True)
    print("\n| gradient checkpointing | loss | peak RSS MiB | over start MiB | train loss |\n|---|---|---:|---:|---:|")
    for (gc, label_only), xs in runs.items():
        med = {k: statistics.median(x[k] for x in xs) for k in ("peak_mb", "over_start_mb", "loss")}
        name = "label-only, chunked (default)" if label_only == "true" else "full logits (transformers)"
        print(f"| {gc} | {name} | {med['peak_mb']:.0f} | {med['over_start_mb']:.0f} | {med['loss']:.4f} |")


if __name__ == "__main__":
    main()
