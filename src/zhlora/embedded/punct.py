"""The demo's second task: punctuation restoration (a second adapter on the same base).

Records are alpaca pairs: the sentence without ，。、；：！？ -> the sentence. Scored per mark
(position in the unpunctuated text, mark) and per exact sentence.
"""
from __future__ import annotations

import json
from pathlib import Path

from zhlora.embedded import reuse
from zhlora.embedded.corpus import pick_sentences
from zhlora.outputs import atomic_write_text

PUNCT = "，。、；：！？"
PUNCT_INSTRUCTION = "给下面的句子加上标点符号。"


def strip_punct(s: str) -> str:
    return "".join(c for c in s if c not in PUNCT)


def punct_data(work: Path, files: dict[str, Path]) -> dict[str, Path]:
    """Alpaca records: the sentence without ，。、；：！？ -> the sentence."""
    d = work / "data"
    out = {"punct_train": d / "punct_train.jsonl", "punct_test": d / "punct_test.jsonl"}
    for name, src, n, seed in (("punct_train", files["train"], 3000, 3), ("punct_test", files["heldout"], 100, 4)):
        if reuse(out[name]):
            continue
        sents = [s for s in pick_sentences(src, 4 * n, seed) if strip_punct(s) != s][:n]
        recs = [{"instruction": PUNCT_INSTRUCTION, "input": strip_punct(s), "output": s} for s in sents]
        atomic_write_text(out[name], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    return out


def punct_marks(s: str) -> set[tuple[int, str]]:
    """{(position in the unpunctuated text, mark)}."""
    marks, i = set(), 0
    for c in s:
        if c in PUNCT:
            marks.add((i, c))
        else:
            i += 1
    return marks


def punct_score(preds: list[str], recs: list[dict]) -> dict:
    """Exact sentences and mark-level P/R/F1; an answer that changed the words scores no marks."""
    tp = fp = fn = exact = 0
    for p, r in zip(preds, recs):
        gold = punct_marks(r["output"])
        hyp = punct_marks(p) if strip_punct(p) == r["input"] else set()
        tp, fp, fn = tp + len(gold & hyp), fp + len(hyp - gold), fn + len(gold - hyp)
        exact += p == r["output"]
    prec, rec = tp / max(1, tp + fp), tp / max(1, tp + fn)
    return {"exact": exact / max(1, len(recs)), "p": prec, "r": rec,
            "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0, "n": len(recs)}


def punct_eval(engine, test: Path) -> dict[str, dict]:
    from zhlora.conversation import Conversation, Message
    from zhlora.infer.engine import GenerationOptions

    recs = [json.loads(x) for x in test.read_text(encoding="utf-8").splitlines()]
    convs = [Conversation([Message("user", f"{r['instruction']}\n{r['input']}")]) for r in recs]
    opts = GenerationOptions(max_new_tokens=80, temperature=0.0)
    return {name: punct_score(engine.generate(convs, adapter=name, options=opts, batch_size=16), recs)
            for name in (None, "punct")}
