"""Greedy decode throughput: base vs merged vs unmerged adapter, the server, batched predict.

    nice -n 10 .venv/bin/python bench/decode_throughput.py [--repeats 3] [--threads 1] [--new-tokens 48]

Model: a random ~33M-parameter LLaMA (hidden 512, 8 layers, 8 heads, vocab ~6000 chars),
a rank-8 LoRA on q_proj/v_proj (random lora_B) and a second one for the server. Greedy with
`ignore_eos`, so every answer has exactly --new-tokens tokens. Two rates per run: new tokens
per second of wall time, and per CPU second of the process doing the work (this process, or
the server's, read from /proc) — on a shared machine the CPU rate is the stable one. Each
number is the median of --repeats rounds; configurations are interleaved within each round
so drifts in machine load hit them alike.

  base / merged / adapter : 4 prompts generated one by one (batch 1) through `Engine`
  predict bs=1 / bs=8     : `run_predict` over 8 prompts with --batch-size 1 vs 8
  serve 8 clients         : `zhlora serve` with 2 adapters, 8 concurrent OpenAI clients
                            (4 per adapter), non-streaming (batched) and streaming (serial)
Goals: merged within 3% of base; unmerged adapter overhead <= 15%; batched predict >= 4x.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PROMPTS = ["今天天气很好，我们去公园散步。", "请把这句话翻译成英文：我爱北京天安门。", "他的错误在于没有仔细检查。",
           "人工智能正在改变世界。", "你好，世界！", "春眠不觉晓，处处闻啼鸟。", "这本书我已经看完了。",
           "明天上午九点开会，请准时参加。"]


def build(tmp: Path):
    """-> (base dir, {name: adapter dir})."""
    from zhlora.models.tiny import make_tiny_model
    from zhlora.train.lora import make_tiny_adapter

    cjk = "".join(chr(0x4E00 + i) for i in range(5700))
    base = make_tiny_model(tmp / "base", "llama", texts=PROMPTS, hidden=512, layers=8, heads=8, kv_heads=8,
                           extra_chars=cjk)
    adapters = {name: make_tiny_adapter(base, tmp / name, seed=seed, r=8, alpha=16, b_std=0.02, template="default")
                for seed, name in ((1, "gec"), (2, "poem"))}
    return base, adapters


def engines(base: Path, adapters: dict):
    from peft import PeftModel

    from zhlora.infer.engine import Engine
    from zhlora.models.loading import load_model, load_tokenizer

    plain = Engine.load(base, template="default")
    merged_model = PeftModel.from_pretrained(load_model(base), str(adapters["gec"])).merge_and_unload()
    merged = Engine.from_model(merged_model, load_tokenizer(base), "default")
    with_adapter = Engine.load(base, adapters={"gec": adapters["gec"]})
    n_params = sum(p.numel() for p in merged_model.parameters())
    return plain, merged, with_adapter, n_params


def rates(fn, cpu_clock=time.process_time) -> tuple[float, float]:
    """Run `fn() -> new tokens`; -> (tokens per wall second, tokens per CPU second)."""
    wall, cpu = time.perf_counter(), cpu_clock()
    tokens = fn()
    return tokens / (time.perf_counter() - wall), tokens / max(cpu_clock() - cpu, 1e-9)


def one_by_one(engine, adapter, opts, prompts) -> int:
    from zhlora.conversation import Conversation

    for p in prompts:
        engine.generate([Conversation.from_pairs([(p, None)])], adapter, opts, batch_size=1)
    return len(prompts) * opts.max_new_tokens


def predict_tokens(engine, opts, batch_size: int, tmp: Path) -> int:
    from zhlora.infer.predict import run_predict

    inp, out = tmp / "prompts.txt", tmp / f"pred-{batch_size}.jsonl"
    inp.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    run_predict(engine, inp, out, "gec", opts, batch_size=batch_size, overwrite=True, progress=False)
    return len(PROMPTS) * opts.max_new_tokens


def process_cpu(pid: int):
    """A clock: CPU seconds (user + system) used so far by process `pid` (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")

    def clock() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick
    return clock


def start_server(base: Path, adapters: dict, threads: int, tmp: Path):
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "zhlora", "serve", "--model", str(base), "--port", str(port),
           "--max-concurrency", "8", "--max-batch", "8"]
    for n, p in adapters.items():
        cmd += ["--adapter", f"{n}={p}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT / "src"))
    log = (tmp / "serve.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server did not start; see {tmp / 'serve.log'}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_tokens(url: str, new_tokens: int, stream: bool) -> int:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="x", timeout=600, max_retries=0)
    counts: list[int] = []

    def ask(i: int):
        kw = dict(model=f"base:{('gec', 'poem')[i % 2]}", max_tokens=new_tokens, temperature=0,
                  messages=[{"role": "user", "content": PROMPTS[i]}], extra_body={"ignore_eos": True})
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                           if c.choices)
            counts.append(new_tokens if text else 0)
        else:
            counts.append(client.chat.completions.create(**kw).usage.completion_tokens)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=48)
    args = ap.parse_args()
    import torch

    from zhlora.infer.engine import GenerationOptions

    torch.set_num_threads(args.threads)
    opts = GenerationOptions(max_new_tokens=args.new_tokens, ignore_eos=True)
    with tempfile.TemporaryDirectory(prefix="zhlora-bench-") as d:
        tmp = Path(d)
        base, adapters = build(tmp)
        plain, merged, with_adapter, n_params = engines(base, adapters)
        proc, url = start_server(base, adapters, args.threads, tmp)
        try:
            rows = measure(args, opts, plain, merged, with_adapter, url, process_cpu(proc.pid), tmp)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    report(rows, n_params, args)


def measure(args, opts, plain, merged, with_adapter, url, server_cpu, tmp) -> dict[str, list[tuple]]:
    single, n = PROMPTS[:4], args.new_tokens
    runs = {"base (batch 1)": lambda: rates(lambda: one_by_one(plain, None, opts, single)),
            "merged (batch 1)": lambda: rates(lambda: one_by_one(merged, None, opts, single)),
            "unmerged adapter (batch 1)": lambda: rates(lambda: one_by_one(with_adapter, "gec", opts, single)),
            "predict, adapter, --batch-size 1": lambda: rates(lambda: predict_tokens(with_adapter, opts, 1, tmp)),
            "predict, adapter, --batch-size 8": lambda: rates(lambda: predict_tokens(with_adapter, opts, 8, tmp)),
            "serve, 2 adapters, 8 clients": lambda: rates(lambda: server_tokens(url, n, False), server_cpu),
            "serve, 2 adapters, 8 clients, stream": lambda: rates(lambda: server_tokens(url, n, True), server_cpu)}
    for fn in runs.values():  # warm-up (first-call allocations, thread pools)
        fn()
    rows: dict[str, list[tuple]] = {k: [] for k in runs}
    for r in range(args.repeats):
        for name, fn in runs.items():
            rows[name].append(fn())
            wall, cpu = rows[name][-1]
            print(f"round {r + 1}: {name}: {wall:.1f} tok/s wall, {cpu:.1f} tok/CPU-s", file=sys.stderr, flush=True)
    return rows


def report(rows: dict[str, list[tuple]], n_params: int, args) -> None:
    wall = {k: statistics.median(w for w, _ in v) for k, v in rows.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in rows.items()}
    print(f"Command: `nice -n 10 .venv/bin/python bench/decode_throughput.py --repeats {args.repeats} "
          f"--threads {args.threads} --new-tokens {args.new_tokens}`  ")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs (load average "
          f"{os.getloadavg()[0]:.1f} at the end), torch threads {args.threads}, Python {platform.python_version()}; "
          f"date {time.strftime('%Y-%m-%d')}  ")
    print(f"Model: random LLaMA, {n_params / 1e6:.1f}M parameters, fp32, greedy, {args.new_tokens} new tokens "
          "per answer\n")
    print("| configuration | tok/s wall (median) | tok/CPU-s (median) | wall runs | CPU runs |")
    print("|---|---:|---:|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {wall[k]:.1f} | {cpu[k]:.1f} | {', '.join(f'{w:.1f}' for w, _ in v)} "
              f"| {', '.join(f'{c:.1f}' for _, c in v)} |")
    print("\n| ratio | wall | CPU | goal |\n|---|---:|---:|---|")
    for label, num, den, goal in (
            ("merged / base", "merged (batch 1)", "base (batch 1)", ">= 0.97"),
            ("unmerged adapter / base", "unmerged adapter (batch 1)", "base (batch 1)", ">= 0.85"),
            ("predict bs 8 / bs 1", "predict, adapter, --batch-size 8", "predict, adapter, --batch-size 1", ">= 4"),
            ("serve 8 clients / adapter alone", "serve, 2 adapters, 8 clients", "unmerged adapter (batch 1)", ""),
            ("serve 8 streams / adapter alone", "serve, 2 adapters, 8 clients, stream",
             "unmerged adapter (batch 1)", "")):
        print(f"| {label} | {wall[num] / wall[den]:.2f} | {cpu[num] / cpu[den]:.2f} | {goal} |")


if __name__ == "__main__":
    main()
