"""pycorrector 1.1.4's SIGHAN-2015 sentence-level correction metric (`eval_model_batch`).

This is the metric behind the SIGHAN-2015 column of pycorrector's README (F1 only).
One decision per sentence, by exact whole-string equality of prediction and target:
- negative sentence (source == target): TN if prediction == target, else FP;
- positive sentence (source != target): TP if prediction == target, else FN
  (a wrong change to an erroneous sentence is an FN, never an FP).
acc = (TP+TN)/total; precision = TP/(TP+FP) and recall = TP/(TP+FN) when TP > 0, else 0.0;
f1 = 2PR/(P+R), or the int 0 when P+R == 0.

TSV reading, exactly as pycorrector: each line is strip()ped (outer whitespace of the line
goes), lines starting with '#' are skipped, and only lines with exactly 2 TAB-separated fields
are kept (so `source<TAB>` with an empty target is skipped). Nothing else is normalised.
The bundled test set is pycorrector's `sighan2015_test.tsv` (707 lines; see data/NOTICE).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence, Union

from zhlora.errors import ZhloraError

SIGHAN2015_TEST = Path(__file__).resolve().parent / "data" / "sighan2015_test.tsv"

Pair = tuple[str, str]


def parse_sighan_tsv(text: str) -> list[Pair]:
    """(source, target) pairs from TSV text, with pycorrector's line rules."""
    pairs = []
    for line in io.StringIO(text, newline=None):  # universal newlines, like open() in text mode
        line = line.strip()
        if line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) == 2:
            pairs.append((parts[0], parts[1]))
    return pairs


def load_sighan_tsv(path: str | os.PathLike | None = None) -> list[Pair]:
    """(source, target) pairs of a SIGHAN TSV file; None = the bundled SIGHAN-2015 test set."""
    p = Path(path) if path is not None else SIGHAN2015_TEST
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ZhloraError(f"cannot read the SIGHAN TSV file {p}: {e}; pass a UTF-8 file with "
                          "lines source<TAB>target") from e
    return parse_sighan_tsv(text)


def _prediction_text(pred: Any, n: int) -> str:
    if isinstance(pred, str):
        return pred
    if isinstance(pred, dict) and "target" in pred:
        return pred["target"]
    raise ZhloraError(f"prediction {n} is a {type(pred).__name__}; each prediction must be a "
                      "string or a dict with a 'target' key")


def sighan_counts(pairs: Sequence[Pair], preds: Sequence[Any]) -> dict[str, int]:
    """TP/FP/FN/TN of predictions against (source, target) pairs."""
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for n, ((src, tgt), pred) in enumerate(zip(pairs, preds), 1):
        right = _prediction_text(pred, n) == tgt
        if src == tgt:
            counts["tn" if right else "fp"] += 1
        else:
            counts["tp" if right else "fn"] += 1
    return counts


def sighan_metric(pairs_or_tsv: Union[str, os.PathLike, Sequence[Pair], None],
                  preds: Sequence[Any]) -> dict[str, Any]:
    """pycorrector 1.1.4's sentence-level metric.

    pairs_or_tsv: a TSV path (str/PathLike), None for the bundled SIGHAN-2015 test set, or a
    sequence of (source, target) pairs (used as given, no stripping).
    preds: one prediction per kept pair, in order: strings or dicts with a 'target' key.
    Returns {acc, precision, recall, f1 (floats; f1 is the int 0 when P+R == 0),
    tp, fp, fn, tn, total}. Raises ZhloraError when there are no pairs (pycorrector:
    ZeroDivisionError) or when the number of predictions differs from the number of pairs.
    """
    if pairs_or_tsv is None or isinstance(pairs_or_tsv, (str, os.PathLike)):
        where = str(pairs_or_tsv or SIGHAN2015_TEST)
        pairs = load_sighan_tsv(pairs_or_tsv)
    else:
        where, pairs = "the given pairs", [(s, t) for s, t in pairs_or_tsv]
    if not pairs:
        raise ZhloraError(f"no sentence pairs in {where}: every line was empty, a '#' comment "
                          "or did not have exactly 2 TAB-separated fields (source<TAB>target); "
                          "accuracy would divide by zero")
    if len(preds) != len(pairs):
        raise ZhloraError(f"{len(preds)} predictions for {len(pairs)} sentence pairs in {where}; "
                          "give exactly one prediction per pair, in file order")
    c = sighan_counts(pairs, preds)
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    total = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp > 0 else 0.0
    recall = tp / (tp + fn) if tp > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall != 0 else 0
    return {"acc": (tp + tn) / total, "precision": precision, "recall": recall, "f1": f1,
            **c, "total": total}


def format_sighan(result: dict[str, Any]) -> str:
    """pycorrector's summary line (without timing): 4 decimals."""
    return (f"Sentence Level: acc:{result['acc']:.4f}, precision:{result['precision']:.4f}, "
            f"recall:{result['recall']:.4f}, f1:{result['f1']:.4f}")
