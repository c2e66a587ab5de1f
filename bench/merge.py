"""Benchmark: zhlora's streaming merge vs PEFT merge_and_unload + save_pretrained vs the I/O floor.

    nice -n 10 .venv/bin/python bench/merge.py [--workdir /tmp/zhlora_merge_bench] [--repeats 3] [--keep]

Builds (shard by shard, never a whole model in memory) a synthetic fp16 LLaMA base of about
1.7 GB in 4 safetensors shards and a rank-64 adapter on all linear layers, then runs each
method in its own subprocess under /usr/bin/time -v (peak RSS) and prints a markdown table.
Goals: zhlora peak RSS <= 1.25 x (largest shard + adapter), >= 3x less than PEFT, wall time
<= 2x the I/O floor (read + write the same bytes).

Every method ends with its output on disk (zhlora merge fsyncs before renaming its folder
into place; the I/O floor copies the shards in 64 MiB chunks with the same background
fdatasync as the merge, then fsyncs; the PEFT script fsyncs its files), and before each run the
previous output is deleted and the page cache's dirty data flushed (`sync`, then 1 s, untimed),
so no method pays for another's writes. An untimed first copy puts the inputs in the page
cache for every method alike.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, FFN, LAYERS, VOCAB, HEADS, RANK = 2048, 5632, 14, 32000, 16, 64
LINEARS = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN),
           "self_attn.v_proj": (HIDDEN, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
           "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN), "mlp.down_proj": (HIDDEN, FFN)}
ROOT = Path(__file__).resolve().parents[1]


def layer_tensors(i: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    p = f"model.layers.{i}."
    out = {p + n + ".weight": (torch.randn(s, generator=g) * 0.02).half() for n, s in LINEARS.items()}
    out[p + "input_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.float16)
    out[p + "post_attention_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.float16)
    return out


def build_base(d: Path) -> None:
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    groups = [list(range(k, LAYERS, 4)) for k in range(4)]   # 4 shards of ~equal size
    groups = [sorted(x) for x in groups]
    weight_map = {}
    for s, layers in enumerate(groups):
        tensors = {}
        if s == 0:
            tensors["model.embed_tokens.weight"] = (torch.randn(VOCAB, HIDDEN, generator=g) * 0.02).half()
        if s == 3:
            tensors["lm_head.weight"] = (torch.randn(VOCAB, HIDDEN, generator=g) * 0.02).half()
            tensors["model.norm.weight"] = torch.ones(HIDDEN, dtype=torch.float16)
        for i in layers:
            tensors.update(layer_tensors(i, g))
        name = f"model-{s + 1:05d}-of-00004.safetensors"
        save_file(tensors, d / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
        del tensors
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
           "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
           "num_key_value_heads": HEADS, "vocab_size": VOCAB, "max_position_embeddings": 2048,
           "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "dtype": "float16",
           "bos_token_id": 1, "eos_token_id": 2}
    (d / "config.json").write_text(json.dumps(cfg, indent=2))


def build_adapter(d: Path) -> None:
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    sd = {}
    for i in range(LAYERS):
        for n, (out, inp) in LINEARS.items():
            m = f"base_model.model.model.layers.{i}.{n}"
            sd[m + ".lora_A.weight"] = torch.randn(RANK, inp, generator=g) * 0.01
            sd[m + ".lora_B.weight"] = torch.randn(out, RANK, generator=g) * 0.01
    save_file(sd, d / "adapter_model.safetensors")
    cfg = {"peft_type": "LORA", "r": RANK, "lora_alpha": 128, "bias": "none", "fan_in_fan_out": False,
           "target_modules": sorted({n.split(".")[-1] for n in LINEARS}), "task_type": "CAUSAL_LM",
           "use_rslora": False, "use_dora": False, "modules_to_save": None}
    (d / "adapter_config.json").write_text(json.dumps(cfg, indent=2))


PEFT_SCRIPT = """
import os, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float16, local_files_only=True)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out, max_shard_size="2GB")
for f in __import__("pathlib").Path(out).iterdir():   # on disk, as zhlora merge leaves it
    fd = os.open(f, os.O_RDONLY); os.fsync(fd); os.close(fd)
"""
IO_SCRIPT = """
import os, sys, pathlib
from concurrent.futures import ThreadPoolExecutor
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir()
pool = ThreadPoolExecutor(1)   # the merge's own scheme: push bytes to disk while copying
for f in sorted(src.glob('*.safetensors')):
    with open(f, 'rb') as r, open(out / f.name, 'wb') as w:
        syncing = None
        while chunk := r.read(64 << 20):
            w.write(chunk)
            w.flush()
            if syncing is None or syncing.done():
                syncing = pool.submit(os.fdatasync, w.fileno())
        if syncing is not None:
            syncing.result()
        os.fsync(w.fileno())
"""


def measure(label: str, cmd: list[str], env: dict) -> dict:
    os.sync()      # start clean: no method pays for the previous one's dirty pages or deletions
    time.sleep(1)
    t0 = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"{label} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    return {"method": label, "wall_s": wall, "peak_rss_mb": rss_kb / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/zhlora_merge_bench")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of all methods; medians are reported")
    args = ap.parse_args()
    wd = Path(args.workdir)
    shutil.rmtree(wd, ignore_errors=True)
    t0 = time.perf_counter()
    build_base(wd / "base")
    build_adapter(wd / "adapter")
    print(f"built inputs in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    shards = sorted((wd / "base").glob("*.safetensors"))
    base_mb = sum(f.stat().st_size for f in shards) / 2**20
    shard_mb = max(f.stat().st_size for f in shards) / 2**20
    adapter_mb = (wd / "adapter" / "adapter_model.safetensors").stat().st_size / 2**20
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TQDM_DISABLE": "1"}
    py = sys.executable
    methods = [("I/O floor (read + write the shards)", "io", [py, "-c", IO_SCRIPT, str(wd / "base"), str(wd / "io")]),
               ("zhlora merge", "zh", [py, "-m", "zhlora", "merge", "--base", str(wd / "base"), "--adapter",
                                       str(wd / "adapter"), "--output", str(wd / "zh"), "--no-progress"]),
               ("PEFT merge_and_unload + save_pretrained", "peft",
                [py, "-c", PEFT_SCRIPT, str(wd / "base"), str(wd / "adapter"), str(wd / "peft")]),
               ("(zhlora CLI start-up alone: `zhlora --help`)", None, [py, "-m", "zhlora", "--help"])]
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in methods}
    measure("warm-up (untimed): page-cache the inputs", methods[0][2], env)
    shutil.rmtree(wd / "io")
    for rep in range(args.repeats):      # the methods alternate, so a busy spell hits all of them
        for label, out, cmd in methods:
            runs[label].append(measure(label, cmd, env))
            if out:      # deleted (and synced, settled) before the next method starts
                shutil.rmtree(wd / out, ignore_errors=True)
        print(f"round {rep + 1}/{args.repeats}: " + ", ".join(f"{r[-1]['wall_s']:.1f}s" for r in runs.values()),
              file=sys.stderr)
    rows = [{"method": label, "wall_s": statistics.median(r["wall_s"] for r in rs),
             "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
             "ratio_runs": [r["wall_s"] for r in rs]} for label, rs in runs.items()]
    floor, zh, peft, startup = rows
    limit = 1.25 * (shard_mb + adapter_mb)
    print(f"\nDate {date.today()}, {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{platform.python_version()}; base {base_mb:.0f} MiB fp16 in {len(shards)} shards "
          f"(largest {shard_mb:.0f} MiB), adapter rank {RANK} all-linear {adapter_mb:.0f} MiB fp32\n")
    print(f"Medians of {args.repeats} rounds (the methods alternate within a round).\n")
    print("| method | wall (s), median | runs (s) | peak RSS (MiB), median |\n|---|---:|---|---:|")
    for r in rows:
        runs_s = " / ".join(f"{x:.1f}" for x in r["ratio_runs"])
        print(f"| {r['method']} | {r['wall_s']:.1f} | {runs_s} | {r['peak_rss_mb']:.0f} |")
    per_round = [z / f for z, f in zip(rows[1]["ratio_runs"], rows[0]["ratio_runs"])]
    print(f"\nzhlora wall / I/O floor per round: " + " / ".join(f"{x:.2f}" for x in per_round)
          + f" (median {statistics.median(per_round):.2f}x)")
    print(f"\nzhlora peak RSS / (largest shard + adapter) = {zh['peak_rss_mb'] / (shard_mb + adapter_mb):.2f} "
          f"(goal <= 1.25, i.e. <= {limit:.0f} MiB)")
    print(f"PEFT / zhlora peak RSS = {peft['peak_rss_mb'] / zh['peak_rss_mb']:.1f}x (goal >= 3x)")
    print(f"zhlora wall / I/O floor = {zh['wall_s'] / floor['wall_s']:.2f}x (goal <= 2x); "
          f"PEFT wall / I/O floor = {peft['wall_s'] / floor['wall_s']:.2f}x; zhlora without CLI start-up "
          f"{(zh['wall_s'] - startup['wall_s']) / floor['wall_s']:.2f}x")
    if not args.keep:
        shutil.rmtree(wd, ignore_errors=True)


if __name__ == "__main__":
    main()
