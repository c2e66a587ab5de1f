"""Time zhlora's ChERRANT reimplementation on MuCGEC dev and compare with ChERRANT itself.

    .venv/bin/python bench/cherrant_speed.py [--shared ../shared] [--workers 2] [--repeats 3]

Two timings, each the median of --repeats runs of `zhlora.gec.scoring.score_para`
(every run starts new worker processes, so per-process caches start cold):
  hyp->M2 + compare : the hypothesis para (1137 lines) -> M2, scored against the shared
                      reference M2 (what `zhlora gec score` does with an M2 reference);
  hyp+ref->M2 + compare : both para files converted (1137 hypothesis + 3126 reference pairs),
                      then scored (the whole ChERRANT pipeline).
ChERRANT (MuCGEC @ 3922193, one process) needs about 240 s for the whole pipeline here.
Prints a markdown snippet for docs/gec_scoring.md / BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

from zhlora.gec.scoring import score_para

CHERRANT_SECONDS = 240.0
EXPECTED = (1084, 1635, 3003, 0.3622)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished worker processes."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _time(fn, repeats: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds) over `repeats` runs."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), _cpu_seconds()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(_cpu_seconds() - start_cpu)
        got = (result.tp, result.fp, result.fn, result.f05)
        if got != EXPECTED:
            raise SystemExit(f"wrong scores {got}, expected {EXPECTED}")
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    d = args.shared / "cgec" / "mucgec_dev"
    hyp, ref_para, ref_m2 = d / "example_pred_dev.txt", d / "MuCGEC_dev.txt", d / "MuCGEC_dev.m2.char"
    t_m2 = _time(lambda: score_para(hyp, ref_m2, fmt="m2", workers=args.workers), args.repeats)
    t_all = _time(lambda: score_para(hyp, ref_para, workers=args.workers), args.repeats)
    load = os.getloadavg()[0]
    print(f"| MuCGEC dev (1137 sentences), {args.workers} worker(s), median of {args.repeats} "
          f"| wall s | CPU s | wall vs ChERRANT {CHERRANT_SECONDS:.0f} s |")
    print("|---|---|---|---|")
    for name, (wall, cpu) in (("hyp para -> M2, compare with reference M2", t_m2),
                              ("hyp + ref para -> M2, compare (full pipeline)", t_all)):
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {CHERRANT_SECONDS / wall:.0f}x |")
    print(f"\n({os.cpu_count()} cores, 1-min load average {load:.1f} at the end; scores "
          "1084/1635/3003, F0.5 0.3622 checked on every run)")


if __name__ == "__main__":
    main()
