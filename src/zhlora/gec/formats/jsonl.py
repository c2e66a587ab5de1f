"""JSON lines with a source and target(s), e.g. `gec synth` output."""
from __future__ import annotations

from zhlora.gec.formats.base import Example, finish

_SOURCE_KEYS = ("source", "src", "input", "text", "sentence")
_TARGET_KEYS = ("targets", "target", "tgt", "output", "correction", "correct")


def load_jsonl(path) -> list[Example]:
    from zhlora.data.sources import iter_records

    examples, problems = [], []
    for rec in iter_records(path):
        where = f"{path}:{rec.line}"
        if rec.problem:
            problems.append(f"{where}: {rec.problem}")
            continue
        v = rec.value if isinstance(rec.value, dict) else {}
        src = next((v[k] for k in _SOURCE_KEYS if isinstance(v.get(k), str)), None)
        tgt = next((v[k] for k in _TARGET_KEYS if k in v), [])
        tgts = [tgt] if isinstance(tgt, str) else tgt
        if src is None or not isinstance(tgts, list) or not all(isinstance(t, str) for t in tgts):
            problems.append(f"{where}: expected an object with a source ({'/'.join(_SOURCE_KEYS)}) "
                            f"and text target(s) ({'/'.join(_TARGET_KEYS)})")
            continue
        examples.append(Example(str(v.get("id", rec.line)), src.strip(), [t.strip() for t in tgts]))
    return finish(path, examples, problems, "jsonl")
