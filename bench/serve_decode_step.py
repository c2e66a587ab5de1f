"""One decoding step of `bench/serve_adapters.py`'s burst: 32 sequences over 8 adapters.

    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_decode_step.py [--rounds 5] [--steps 20]
        [--baseline-src /path/to/older/checkout/src]

Same model, adapters and prompt mix as serve_adapters.py. Each round runs one process per
tree (this tree's src, then --baseline-src if given): prefill the 32 prompts together, 3
warm-up steps, then --steps timed decoding steps (`RowsBackend.decode`). Reported per tree:
the step time's p10, p25 and median over all rounds pooled (on a shared machine the low
quantiles are the steadier figure), and the ratio to the baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(steps: int) -> list[float]:
    """-> `steps` decoding step times in ms (this process's zhlora)."""
    import torch  # noqa: I001  (zhlora before serve_adapters, see below)

    from zhlora.conversation import Conversation   # zhlora first: from PYTHONPATH (the tree measured)
    from zhlora.infer.engine import Engine
    from zhlora.infer.options import GenerationOptions
    from zhlora.infer.scheduler import Sequence

    from serve_adapters import MIX, TEXT, build     # (it puts this checkout's src on sys.path)

    base, adapters = build(Path(tempfile.mkdtemp(prefix="zb-decode-")))
    eng = Engine.load(base, adapters=adapters)
    names, backend = list(adapters), eng.scheduler.backend()
    seqs = []
    for i in range(32):
        a = names[i % len(names)]
        conv = Conversation.from_pairs([(TEXT[i:i + MIX[i % len(MIX)][0]], None)])
        seqs.append(Sequence(eng.encode(conv, a), a, GenerationOptions(), None))
    times = []
    with torch.inference_mode():
        logits = backend.prefill(seqs)
        for i in range(3 + steps):
            for s, row in zip(seqs, logits):
                s.generated.append(int(row.argmax()))
            t = time.perf_counter()
            logits = backend.decode(seqs)
            times.append((time.perf_counter() - t) * 1000)
    return times[3:]


def run_tree(src: Path, steps: int) -> list[float]:
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{ROOT / 'bench'}")
    out = subprocess.run([sys.executable, __file__, "--child", str(steps)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--baseline-src", type=Path)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    trees = {"this": ROOT / "src", **({"baseline": args.baseline_src} if args.baseline_src else {})}
    got: dict[str, list[float]] = {k: [] for k in trees}
    for r in range(args.rounds):
        for name, src in trees.items():
            xs = run_tree(src, args.steps)
            got[name] += xs
            print(f"round {r} {name}: median {statistics.median(xs):.1f} ms, load {os.getloadavg()[0]:.1f}", flush=True)
    stats = {}
    for name, xs in got.items():
        xs = sorted(xs)
        stats[name] = {"p10": xs[len(xs) // 10], "p25": xs[len(xs) // 4], "median": statistics.median(xs)}
        print(f"{name}: step ms p10 {stats[name]['p10']:.1f}, p25 {stats[name]['p25']:.1f}, "
              f"median {stats[name]['median']:.1f} ({len(xs)} steps)")
    if "baseline" in stats:
        print("this / baseline: " + ", ".join(f"{q} {stats['this'][q] / stats['baseline'][q]:.3f}"
                                              for q in ("p10", "p25", "median")))
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
