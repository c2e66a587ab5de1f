"""Benchmark: `zhlora export gguf` per family and type vs the I/O floor; llama.cpp decode vs zhlora.

    OMP_NUM_THREADS=1 .venv/bin/python bench/gguf_export.py [--threads 1] [--repeats 3] [--tokens 64]

For one ~30M-parameter float32 model per family (LLaMA with zhlora's character vocabulary,
Qwen2, GLM-4-HF, ChatGLM3 in THUDM's format), side by side in one run:
- export wall time for f32 / f16 / q8_0 (median of `--repeats`), against the I/O floor: reading
  the merged safetensors and writing the same number of bytes with an fsync (what any export
  must at least do);
- the GGUF file size per type;
- greedy decode tokens/s, llama.cpp (llama-cpp-python, f32 and q8_0 files) vs zhlora
  (transformers' generate with the KV cache, float32), on the same number of CPU threads.
Needs the `llamacpp` extra. The machine is shared: compare ratios within one run only.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from zhlora.merge.gguf import export_gguf, llamacpp

TEXTS = ["今天天气很好，我们去公园散步。", "人工智能正在改变世界。", "请把这句话翻译成英文：我爱北京天安门。"]


def build(family: str, d: Path) -> Path:
    from zhlora.models.chatglm.tiny import make_tiny_chatglm
    from zhlora.models.tiny import make_tiny_model

    if family == "chatglm3":
        return make_tiny_chatglm(d, "chatglm3", hidden=512, layers=8, heads=8, kv_groups=2)
    return make_tiny_model(d, family, texts=TEXTS, hidden=512, layers=8, heads=8, kv_heads=2)


def io_floor(model: Path, out: Path) -> float:
    """Read every safetensors byte and write as many bytes, fsynced."""
    t = time.perf_counter()
    with open(out, "wb") as w:
        for f in sorted(model.glob("*.safetensors")):
            with open(f, "rb") as r:
                while chunk := r.read(64 << 20):
                    w.write(chunk)
        w.flush()
        os.fsync(w.fileno())
    dt = time.perf_counter() - t
    out.unlink()
    return dt


def timed_export(model: Path, out: Path, qtype: str) -> tuple[float, int]:
    t = time.perf_counter()
    info = export_gguf(model, out, qtype, overwrite=True)
    return time.perf_counter() - t, info.bytes


def zhlora_tps(model: Path, ids: list[int], n: int) -> float:
    from zhlora.models.loading import load_model

    m = load_model(model, dtype=torch.float32)
    m.eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        m.generate(x, max_new_tokens=4, min_new_tokens=4, do_sample=False)          # warm-up
        t = time.perf_counter()
        m.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return n / (time.perf_counter() - t)


def llamacpp_tps(path: Path, ids: list[int], n: int, threads: int) -> float:
    llm = llamacpp.load(path, n_ctx=256, n_threads=threads)
    llamacpp.greedy(llm, ids, 4, stop_at_eog=False)                                  # warm-up
    t = time.perf_counter()
    got = llamacpp.greedy(llm, ids, n, stop_at_eog=False)
    return len(got) / (time.perf_counter() - t)


def run_family(family: str, work: Path, args) -> dict:
    from zhlora.models.loading import load_tokenizer

    model = build(family, work / family)
    from zhlora.merge.base import open_base

    params = sum(int(torch.Size(t.shape).numel()) for t in open_base(model).tensors.values())
    row = {"family": family, "params": params,
           "floor": statistics.median(io_floor(model, work / "floor.bin") for _ in range(args.repeats))}
    for q in ("f32", "f16", "q8_0"):
        runs = [timed_export(model, work / f"{family}-{q}.gguf", q) for _ in range(args.repeats)]
        row[q] = (statistics.median(r[0] for r in runs), runs[0][1])
    ids = load_tokenizer(model)(TEXTS[0])["input_ids"]
    row["tps_zhlora"] = statistics.median(zhlora_tps(model, ids, args.tokens) for _ in range(args.repeats))
    for q in ("f32", "q8_0"):
        row[f"tps_{q}"] = statistics.median(llamacpp_tps(work / f"{family}-{q}.gguf", ids, args.tokens, args.threads)
                                            for _ in range(args.repeats))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--families", default="llama,qwen2,glm4,chatglm3")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not llamacpp.available():
        print("llama-cpp-python is not installed (pip install 'zhlora[llamacpp]')")
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="zhlora_gguf_bench_") as tmp:
        for fam in args.families.split(","):
            rows.append(run_family(fam, Path(tmp), args))
            print(rows[-1], flush=True)
    print(f"\n{date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, threads {args.threads}, median of {args.repeats}\n")
    print("| family | params | I/O floor s | export f32 s (x floor) | f16 s (x) | q8_0 s (x) | size f32 / f16 / q8_0 MB "
          "| decode tok/s zhlora | llama.cpp f32 | llama.cpp q8_0 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ex = " | ".join(f"{r[q][0]:.2f} ({r[q][0] / r['floor']:.1f}x)" for q in ("f32", "f16", "q8_0"))
        sizes = " / ".join(f"{r[q][1] / 1e6:.1f}" for q in ("f32", "f16", "q8_0"))
        print(f"| {r['family']} | {r['params'] / 1e6:.1f}M | {r['floor']:.3f} | {ex} | {sizes} | "
              f"{r['tps_zhlora']:.0f} | {r['tps_f32']:.0f} ({r['tps_f32'] / r['tps_zhlora']:.1f}x) | "
              f"{r['tps_q8_0']:.0f} ({r['tps_q8_0'] / r['tps_zhlora']:.1f}x) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
