"""Batch prediction over a prompt file, resumable.

Output is JSONL, one record per input line:
    {"id": ..., "line": N, "input": "...", "output": "...", "adapter": "gec" | null,
     "seconds": 0.12, ["reference": "..."]}
`seconds` is the record's share of its batch's wall time. Records are appended and flushed
after every batch, so a killed run keeps its finished lines; a rerun skips every input line
already in the output (by `line`). When all lines are done the file is rewritten in input
order.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.infer.engine import Engine, GenerationOptions
from zhlora.infer.prompts import PromptRecord, read_prompts
from zhlora.outputs import atomic_write_text


@dataclass
class PredictSummary:
    generated: int
    already_done: int
    bad_lines: int
    seconds: float


def run_predict(engine: Engine, input_path, output_path, adapter: str | None = None,
                options: GenerationOptions | None = None, batch_size: int = 8, fmt: str = "auto",
                overwrite: bool = False, progress: bool = True) -> PredictSummary:
    records, problems = read_prompts(input_path, fmt)
    for p in problems:
        print(f"skipped {p}", file=sys.stderr)
    out = Path(output_path)
    if overwrite and out.exists():
        out.unlink()
    done = _finished_lines(out)
    todo = [r for r in records if r.line not in done]
    opts = (options or engine.default_options(adapter)).validated()
    t0 = time.perf_counter()
    _generate_into(engine, todo, out, adapter, opts, batch_size, progress)
    _sort_by_line(out)
    return PredictSummary(len(todo), len(records) - len(todo), len(problems), time.perf_counter() - t0)


def _generate_into(engine: Engine, todo: list[PromptRecord], out: Path, adapter, opts, batch_size, progress):
    """Longest prompts first, `batch_size` at a time; append + flush after each batch."""
    from tqdm import tqdm

    prompts = {r.line: engine.encode(r.conv, adapter, opts.max_new_tokens) for r in todo}
    todo = sorted(todo, key=lambda r: -len(prompts[r.line]))
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), unit="prompt", file=sys.stderr, disable=not progress)
    with out.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), max(1, batch_size)):
            batch = todo[start:start + max(1, batch_size)]
            t = time.perf_counter()
            results = engine.complete([prompts[r.line] for r in batch], adapter, opts, batch_size=len(batch))
            share = (time.perf_counter() - t) / len(batch)
            for r, c in zip(batch, results):
                f.write(json.dumps(_output_record(r, c.text, adapter, share), ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(batch))
    bar.close()


def _output_record(r: PromptRecord, text: str, adapter, seconds: float) -> dict:
    rec = {"id": r.id, "line": r.line, "input": r.shown, "output": text, "adapter": adapter,
           "seconds": round(seconds, 4)}
    if r.reference is not None:
        rec["reference"] = r.reference
    return rec


def _finished_lines(out: Path) -> set[int]:
    """Input line numbers already in `out`; a torn last line (killed mid-write) is dropped."""
    if not out.exists():
        return set()
    text = out.read_text(encoding="utf-8")
    kept, done = [], set()
    for n, line in enumerate(text.splitlines(keepends=True), 1):
        try:
            rec = json.loads(line)
            done.add(int(rec["line"]))
            kept.append(line if line.endswith("\n") else line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if line.endswith("\n"):
                raise ZhloraError(f"{out}:{n}: not a zhlora predict record; choose another --output "
                                  "or pass --overwrite to start over") from None
    if "".join(kept) != text:
        atomic_write_text(out, "".join(kept))
    return done


def _sort_by_line(out: Path) -> None:
    if not out.exists():
        return
    lines = [ln for ln in out.read_text(encoding="utf-8").splitlines() if ln.strip()]
    ordered = sorted(lines, key=lambda ln: json.loads(ln)["line"])
    if ordered != lines:
        atomic_write_text(out, "".join(ln + "\n" for ln in ordered))
