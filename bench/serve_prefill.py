"""Prefill of one burst of `bench/serve_adapters.py`: the 32 prompts one forward each vs one
forward for all (what the scheduler does when they are admitted at one token boundary).

    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_prefill.py [--repeats 5] [--clients 32]

Same model, adapters and prompt mix as serve_adapters.py (the clients spread over the 8
adapters); the two ways interleaved in each round, medians. Also checks that both give the
same logits bit for bit.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_adapters import MIX, TEXT, build


def main() -> None:
    import torch

    from zhlora.conversation import Conversation
    from zhlora.infer.engine import Engine
    from zhlora.infer.options import GenerationOptions
    from zhlora.infer.scheduler import Sequence

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clients", type=int, default=32)
    args = ap.parse_args()
    base, adapters = build(Path(tempfile.mkdtemp(prefix="zhlora-bench-prefill-")))
    eng = Engine.load(base, adapters=adapters)
    names, backend = list(adapters), eng.scheduler.backend()
    jobs = []
    for i in range(args.clients):
        chars, max_tokens = MIX[i % len(MIX)]
        a = names[i % len(names)]
        jobs.append((eng.encode(Conversation.from_pairs([(TEXT[i:i + chars], None)]), a, max_tokens), a))

    def run(together: bool) -> tuple[float, torch.Tensor]:
        seqs = [Sequence(p, a, GenerationOptions(), None) for p, a in jobs]
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = backend.prefill(seqs) if together else torch.cat([backend.prefill([s]) for s in seqs])
        return time.perf_counter() - t0, out

    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for together in (False, True):
            t, _ = run(together)
            times[together].append(t)
    same = torch.equal(run(False)[1], run(True)[1])
    one, all_ = statistics.median(times[False]), statistics.median(times[True])
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {args.clients} prompts, "
          f"{sum(len(p) for p, _ in jobs)} tokens, {args.repeats} rounds")
    print(f"one forward each: {one:.2f} s, one forward for all: {all_:.2f} s, "
          f"speed-up {one / all_:.2f}x, logits bit-equal: {same}")
    print({"one_each": [round(t, 3) for t in times[False]], "together": [round(t, 3) for t in times[True]]})


if __name__ == "__main__":
    main()
