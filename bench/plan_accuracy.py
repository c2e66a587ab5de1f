"""How close is `zhlora train --plan` to a real run? Estimated vs measured peak memory on CPU.

    .venv/bin/python bench/plan_accuracy.py [--runs A-off,A-on,B-off,B-on,Q-on] [--steps 2]

Runs, each its own process, through `zhlora.train.sft.train` (fp32, LoRA r=16 on all 7
linears, packing, `label_only_loss` and the other defaults, 2 optimizer steps):
  A  a 31.4M-parameter LLaMA (hidden 512, 9 layers, 8 heads), batch 8 x cutoff 256,
     gradient checkpointing off and on
  B  a second shape (hidden 384, 12 layers, 6 heads, 2 KV heads), batch 4 x cutoff 512, off and on
  Q  shape A as QLoRA (quantization=4bit: bitsandbytes NF4 on the CPU; checkpointing on)
The data are long records (made here from examples/data) that cutoff_len truncates, so every
packed row is full (batch x cutoff tokens, as the plan assumes) and most positions are labels.

"Measured" is what the plan estimates: the peak of live tensor memory (what PyTorch's
allocator holds; on a GPU `torch.cuda.max_memory_allocated`). At the Trainer's
`on_train_begin` the storages of the model's parameters and buffers (and bitsandbytes'
quantization constants) are summed; from there to the end torch.profiler records every CPU
allocation and free (`profile_memory=True`), and the peak of their running total is added.
The process's RSS growth (VmHWM minus VmRSS before `train()`) is printed beside it: it also
counts library code paged in, the Trainer and glibc arenas keeping freed blocks.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "zh_instruct_sample.jsonl"
MiB = 1024 ** 2
SHAPES = {"A": {"hidden": 512, "layers": 9, "heads": 8, "kv_heads": 8, "batch": 8, "cutoff": 256},
          "B": {"hidden": 384, "layers": 12, "heads": 6, "kv_heads": 2, "batch": 4, "cutoff": 512}}


def recipe(model: Path, data: Path, out: Path, batch: int, cutoff: int, steps: int, ckpt: bool,
           quant: str = "none") -> list[str]:
    return [f"model={model}", f"data={data}", f"output_dir={out}", "overwrite=true", "dtype=float32",
            f"batch_size={batch}", f"cutoff_len={cutoff}", "packing=true", f"max_steps={steps}",
            "lora_target=all", "lora_r=16", "lora_dropout=0", "save_steps=0", "eval_ratio=0",
            "report_to=none", "logging_steps=1", f"gradient_checkpointing={str(ckpt).lower()}",
            f"quantization={quant}"]


def long_records(path: Path, n: int = 64, chars: int = 1200) -> Path:
    """Records whose answers are longer than any cutoff used here (text of the sample data)."""
    rows = [json.loads(x) for x in DATA.read_text(encoding="utf-8").splitlines() if x.strip()]
    text = "".join(r.get("output", "") for r in rows)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            start = (i * 97) % max(1, len(text) - chars)
            f.write(json.dumps({"instruction": rows[i % len(rows)]["instruction"],
                                "output": (text * 2)[start:start + chars]}, ensure_ascii=False) + "\n")
    return path


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def quant_constants(model) -> list:
    """bitsandbytes' 4-bit quantization state tensors (absmax, codebooks): not parameters."""
    out = []
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        while qs is not None:
            out += [t for t in (getattr(qs, "absmax", None), getattr(qs, "code", None)) if t is not None]
            qs = getattr(qs, "state2", None)
    return out


def child(overrides: list[str]) -> None:
    """One measured run (this process): print the static and dynamic tensor bytes and RSS."""
    import gc

    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    import zhlora.train.trainer as trainer_mod
    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    res: dict = {"labels": []}
    loss = trainer_mod.label_only_loss

    def counting_loss(hidden, labels, *a, **k):  # records each step's label tokens
        res["labels"].append(int((labels[:, 1:] != -100).sum()))
        res["tokens"] = int(labels.numel())
        return loss(hidden, labels, *a, **k)

    trainer_mod.label_only_loss = counting_loss

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            ps = list(model.parameters())
            res["weights"] = storage_bytes([p for p in ps if not p.requires_grad] + list(model.buffers())
                                           + quant_constants(model))
            res["trainable"] = storage_bytes([p for p in ps if p.requires_grad])
            self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self.prof.start()

        def on_train_end(self, *a, **k):
            self.prof.stop()
            events = sorted((e.start_ns(), e.nbytes()) for e in self.prof.profiler.kineto_results.events()
                            if e.name() == "[memory]")
            run = peak = 0
            for _, n in events:
                run += n
                peak = max(peak, run)
            res["dynamic"] = peak

    cfg = load_config(None, overrides)
    gc.collect()
    before = status_kib("VmRSS") * 1024
    train(cfg, callbacks=[Probe()])
    res["rss"] = status_kib("VmHWM") * 1024 - before
    print("RESULT " + json.dumps(res), flush=True)


def measure(overrides: list[str]) -> dict:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    res = subprocess.run([sys.executable, __file__, "--child", *overrides], capture_output=True, text=True, env=env,
                         check=False)
    if res.returncode:
        raise SystemExit(res.stdout[-2000:] + res.stderr[-3000:])
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def estimated(overrides: list[str]):
    from zhlora.train.config import load_config
    from zhlora.train.plan import build_plan

    cfg = load_config(None, overrides)
    lora, qlora = build_plan(cfg)[1]
    return qlora if cfg.quantization != "none" else lora


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--runs", default="A-off,A-on,B-off,B-on,Q-on", help="comma-separated: shape-gc")
    args = ap.parse_args()
    from zhlora.models.tiny import make_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="plan_accuracy_"))
    data = long_records(tmp / "long.jsonl")
    texts = [data.read_text(encoding="utf-8")]
    models = {k: make_tiny_model(tmp / k, "llama", texts=texts, hidden=v["hidden"], layers=v["layers"],
                                 heads=v["heads"], kv_heads=v["kv_heads"]) for k, v in SHAPES.items()}
    print(f"data: {data.name}, 64 records truncated at cutoff_len (full packed rows); fp32, packing, "
          f"LoRA r=16 on all linears, label_only_loss, {args.steps} steps")
    print("| run | shape | grad. ckpt | est. weights | meas. weights | est. rest | meas. rest "
          "| est. peak | meas. tensor peak | est/meas | RSS growth |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in args.runs.split(","):
        key, gc_mode = run.split("-")
        shape = SHAPES["A" if key == "Q" else key]
        overrides = recipe(models["A" if key == "Q" else key], data, tmp / f"out-{run}", shape["batch"],
                           shape["cutoff"], args.steps, gc_mode == "on", "4bit" if key == "Q" else "none")
        est, got = estimated(overrides), measure(overrides)
        meas_peak = got["weights"] + got["trainable"] + got["dynamic"]
        est_rest = est.total - est.weights
        print(f"| {run} | h{shape['hidden']} x {shape['layers']}L, {shape['batch']}x{shape['cutoff']} "
              f"({max(got['labels'])} labels) | {gc_mode} | {est.weights / MiB:.1f} | {got['weights'] / MiB:.1f} "
              f"| {est_rest / MiB:.1f} | {(meas_peak - got['weights']) / MiB:.1f} | {est.total / MiB:.1f} "
              f"| {meas_peak / MiB:.1f} | {est.total / meas_peak:.2f} | {got['rss'] / MiB:.0f} |", flush=True)
    print("MiB; est. rest = adapter+grads+AdamW + activations + logits/loss; meas. rest = trainable "
          "parameters + the profiler's peak of live allocations during training")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
