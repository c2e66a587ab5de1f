"""How close is `zhlora train --plan` to a real run? Estimated vs measured peak memory on CPU.

    .venv/bin/python bench/plan_accuracy.py [--layers 9] [--hidden 512] [--repeats 3]

A ~30M-parameter LLaMA (random weights, char tokenizer), fp32, LoRA on all 7 linear layers,
packing, batch 8 x cutoff 256, a few optimizer steps through `zhlora.train.sft.train`, with and
without gradient checkpointing. Each run is its own process; it reads its resident set
(VmRSS) just before `train()` (torch, transformers, PEFT and the Trainer already imported) and
its high-water mark (VmHWM) after. "Measured" is the difference: what the model, the adapter,
the optimizer and the activations added. "Estimated" is the plan's peak for the same recipe
(fp32 weights and activations). A third run with a 1-layer hidden-64 model measures what
every run adds whatever the model (library code paged in by the first backward pass, the
Trainer, allocator arenas: the plan does not count these, as on a GPU it does not count the
CUDA context); the last column compares the estimate with the measurement minus that floor.
Runs are interleaved, `--repeats` times; medians reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "zh_instruct_sample.jsonl"
MiB = 1024 ** 2


def recipe(model: Path, out: Path, batch: int, cutoff: int, steps: int, ckpt: bool) -> list[str]:
    return [f"model={model}", f"data={DATA}", f"output_dir={out}", "overwrite=true", "dtype=float32",
            f"batch_size={batch}", f"cutoff_len={cutoff}", "packing=true", f"max_steps={steps}",
            "lora_target=all", "lora_r=16", "lora_dropout=0", "save_steps=0", "eval_ratio=0",
            "report_to=none", "logging_steps=1", f"gradient_checkpointing={str(ckpt).lower()}"]


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(overrides: list[str]) -> None:
    """One measured run (this process): print {"before", "peak"} in bytes."""
    import gc

    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    cfg = load_config(None, overrides)
    gc.collect()
    before = status_kib("VmRSS") * 1024
    train(cfg)
    print("RESULT " + json.dumps({"before": before, "peak": status_kib("VmHWM") * 1024}), flush=True)


def measure(overrides: list[str]) -> float:
    res = subprocess.run([sys.executable, __file__, "--child", *overrides], capture_output=True,
                         text=True, env={"OMP_NUM_THREADS": "2", **_env()})
    if res.returncode:
        raise SystemExit(res.stdout[-2000:] + res.stderr[-3000:])
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    r = json.loads(line[len("RESULT "):])
    return r["peak"] - r["before"]


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def estimated(overrides: list[str]) -> float:
    from zhlora.train.config import load_config
    from zhlora.train.plan import build_plan

    return build_plan(load_config(None, overrides))[1][0].total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cutoff", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from zhlora.models.tiny import make_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="plan_accuracy_"))
    texts = [DATA.read_text(encoding="utf-8")]
    model = make_tiny_model(tmp / "base", "llama", texts=texts, hidden=args.hidden, layers=args.layers,
                            heads=8, kv_heads=8)
    floor_model = make_tiny_model(tmp / "floor", "llama", texts=texts, hidden=64, layers=1, heads=2, kv_heads=2)
    runs = {ck: recipe(model, tmp / f"out-{ck}", args.batch, args.cutoff, args.steps, ck) for ck in (False, True)}
    runs["floor"] = recipe(floor_model, tmp / "out-floor", args.batch, args.cutoff, args.steps, False)
    est = {ck: estimated(r) for ck, r in runs.items()}
    got: dict = {k: [] for k in runs}
    for _ in range(args.repeats):
        for ck, r in runs.items():
            got[ck].append(measure(r))
    # what any run adds whatever the model: library code paged in by the first backward pass,
    # the Trainer, allocator arenas (on a GPU the CUDA context plays this part)
    floor = statistics.median(got["floor"]) - est["floor"]
    n = sum(p.numel() for p in __import__("safetensors.torch", fromlist=["x"]).load_file(
        str(model / "model.safetensors")).values())
    print(f"model: LLaMA hidden {args.hidden}, {args.layers} layers, {n / 1e6:.1f}M parameters, fp32; "
          f"batch {args.batch} x cutoff {args.cutoff}, packing, LoRA r=16 on all linears, {args.steps} steps")
    print(f"fixed overhead of a run (1-layer hidden-64 model, measured - its estimate): {floor / MiB:.0f} MiB")
    print(f"| gradient checkpointing | estimated (MiB) | measured peak - start RSS (MiB, median of {args.repeats}) "
          "| estimate / measured | estimate / (measured - fixed overhead) |")
    print("|---|---:|---:|---:|---:|")
    for ck in (False, True):
        m = statistics.median(got[ck])
        print(f"| {'on' if ck else 'off'} | {est[ck] / MiB:.0f} | {m / MiB:.0f} "
              f"({', '.join(f'{x / MiB:.0f}' for x in got[ck])}) | {est[ck] / m:.2f} | {est[ck] / (m - floor):.2f} |")
    diff_est, diff_got = est[False] - est[True], statistics.median(got[False]) - statistics.median(got[True])
    print(f"checkpointing saves: estimated {diff_est / MiB:.0f} MiB, measured {diff_got / MiB:.0f} MiB "
          f"(ratio {diff_est / diff_got:.2f})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
