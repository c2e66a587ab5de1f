"""Many adapters, one batch: `zhlora serve` under 32 concurrent clients (issue #16).

    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_adapters.py [--repeats 3] [--clients 32]
        [--baseline-src /path/to/older/checkout/src]

Model: a random ~33M-parameter LLaMA (hidden 512, 8 layers, 8 heads, vocab ~6000 chars) with
8 rank-16 LoRA adapters on q_proj/v_proj (random lora_B). Every round, --clients clients
start at once, half streaming, each with one chat request whose prompt and output lengths
come from a fixed mix (greedy, `ignore_eos`, so outputs have exactly max_tokens tokens):

  (a) baseline  : the server of --baseline-src (e.g. the previous release), clients spread
                  over the 8 adapters
  (b) 1 adapter : this tree's server, all clients on one adapter
  (c) 8 adapters: this tree's server, clients spread over the 8 adapters

Reported per configuration, medians over --repeats rounds (configurations interleaved in
each round): aggregate generated tokens per wall second; p50/p99 time to first token and
per-token latency of the streaming clients (all rounds pooled). Goals: (c) >= 0.8x (b) and
(c) >= 3x (a).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
TEXT = "今天天气很好我们去公园散步请把这句话翻译成英文我爱北京天安门他的错误在于没有仔细检查人工智能正在改变世界" * 4
MIX = [(8, 16), (32, 32), (64, 24), (16, 48)]  # (prompt chars, max_tokens)
N_ADAPTERS = 8


def build(tmp: Path) -> tuple[Path, dict]:
    from zhlora.models.tiny import make_tiny_model
    from zhlora.train.lora import make_tiny_adapter

    cjk = "".join(chr(0x4E00 + i) for i in range(5700))
    base = make_tiny_model(tmp / "base", "llama", texts=[TEXT], hidden=512, layers=8, heads=8, kv_heads=8,
                           extra_chars=cjk)
    adapters = {f"a{i}": make_tiny_adapter(base, tmp / f"a{i}", seed=i + 1, r=16, alpha=32, b_std=0.02,
                                           template="default") for i in range(N_ADAPTERS)}
    return base, adapters


def start_server(src: Path, base: Path, adapters: dict, port: int, log: Path, extra: list[str]):
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "zhlora", "serve", "--model", str(base), "--port", str(port),
           *[x for n, p in adapters.items() for x in ("--adapter", f"{n}={p}")], *extra]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    import httpx

    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(log.read_text()[-2000:])


async def one_client(client, url: str, model: str, i: int, stream: bool) -> dict:
    chars, max_tokens = MIX[i % len(MIX)]
    body = {"model": model, "messages": [{"role": "user", "content": TEXT[i:i + chars]}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": stream}
    t0 = time.perf_counter()
    if not stream:
        r = await client.post(f"{url}/v1/chat/completions", json=body)
        r.raise_for_status()
        return {"tokens": r.json()["usage"]["completion_tokens"], "end": time.perf_counter() - t0}
    times = []
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {") and '"content": ""' not in line and '"content"' in line:
                times.append(time.perf_counter() - t0)
    return {"tokens": len(times), "end": time.perf_counter() - t0, "ttft": times[0],
            "tpot": (times[-1] - times[0]) / max(1, len(times) - 1)}


async def burst(url: str, models: list[str], clients: int) -> list[dict]:
    import httpx

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as client:
        return await asyncio.gather(*[one_client(client, url, models[i % len(models)], i, i % 2 == 0)
                                      for i in range(clients)])


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--baseline-src", type=Path, default=None, help="src/ folder of the server to compare with")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="zhlora-bench-serve-"))
    base, adapters = build(tmp)
    names = list(adapters)
    servers, procs = {}, []
    try:
        new = start_server(ROOT / "src", base, adapters, 8711, tmp / "new.log",
                           ["--max-batch", str(args.clients), "--max-concurrency", str(4 * args.clients)])
        procs.append(new)
        servers["(b) 1 adapter"] = ("http://127.0.0.1:8711", ["a0"])
        servers["(c) 8 adapters"] = ("http://127.0.0.1:8711", names)
        if args.baseline_src:
            old = start_server(args.baseline_src, base, adapters, 8712, tmp / "old.log",
                               ["--max-batch", str(args.clients), "--max-concurrency", str(args.clients)])
            procs.append(old)
            servers = {"(a) baseline, 8 adapters": ("http://127.0.0.1:8712", names), **servers}
        results = {k: [] for k in servers}
        asyncio.run(burst(servers["(c) 8 adapters"][0], names, 8))  # warm-up
        for r in range(args.repeats):
            for key, (url, models) in servers.items():
                t0 = time.perf_counter()
                out = asyncio.run(burst(url, models, args.clients))
                wall = time.perf_counter() - t0
                results[key].append((sum(o["tokens"] for o in out) / wall, out))
                print(f"round {r + 1}: {key}: {results[key][-1][0]:.1f} tok/s", file=sys.stderr, flush=True)
    finally:
        for p in procs:
            p.terminate()
    report(results, args)


def report(results: dict, args) -> None:
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"{args.clients} clients, {args.repeats} rounds\n")
    print("| configuration | tok/s (median) | TTFT p50 s | TTFT p99 s | per-token p50 ms | per-token p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    med = {}
    for key, rounds in results.items():
        med[key] = statistics.median(r[0] for r in rounds)
        streams = [o for _, out in rounds for o in out if "ttft" in o]
        ttft, tpot = [o["ttft"] for o in streams], [o["tpot"] * 1000 for o in streams]
        print(f"| {key} | {med[key]:.1f} | {pct(ttft, .5):.2f} | {pct(ttft, .99):.2f} | "
              f"{pct(tpot, .5):.1f} | {pct(tpot, .99):.1f} |")
    b, c = med["(b) 1 adapter"], med["(c) 8 adapters"]
    print(f"\n(c)/(b) = {c / b:.2f} (goal >= 0.8)")
    a = next((v for k, v in med.items() if k.startswith("(a)")), None)
    if a:
        print(f"(c)/(a) = {c / a:.2f} (goal >= 3)")
    print(json.dumps({k: round(v, 2) for k, v in med.items()}))


if __name__ == "__main__":
    main()
