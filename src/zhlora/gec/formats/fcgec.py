"""FCGEC JSON: `{id: {"sentence", "error_flag", "operation", ...}}`; targets are rebuilt from
the operations."""
from __future__ import annotations

import json
import re
from pathlib import Path

from zhlora.errors import DataError
from zhlora.gec.formats.base import Example, finish, read_lines


def load_fcgec(path) -> list[Example]:
    path = Path(path)
    text = "\n".join(t for _, t in read_lines(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError([f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})"]) from None
    if not isinstance(data, dict):
        raise DataError([f"{path}:1: FCGEC is one JSON object {{id: {{sentence, error_flag, "
                         f"operation}}}}, found a {type(data).__name__}"])
    examples, problems = [], []
    for key, rec in data.items():
        where = f"{path}: record {key!r}"
        if not isinstance(rec, dict) or not isinstance(rec.get("sentence"), str):
            problems.append(f"{where}: missing the 'sentence' text")
            continue
        try:
            targets = _fcgec_targets(rec)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            problems.append(f"{where}: cannot apply its 'operation' ({e})")
            continue
        examples.append(Example(str(key), rec["sentence"], targets))
    return finish(path, examples, problems, "fcgec")


def _fcgec_targets(rec: dict) -> list[str]:
    if "error_flag" not in rec and "operation" not in rec:
        return []  # the test set carries neither
    if int(rec.get("error_flag", 1)) == 0:
        return [rec["sentence"]]
    ops = rec.get("operation", "[]")
    ops = json.loads(ops) if isinstance(ops, str) else ops
    targets = apply_fcgec_operations(rec["sentence"], ops)
    return targets or [rec["sentence"]]


def apply_fcgec_operations(sentence: str, ops: list[dict]) -> list[str]:
    """Corrected sentences from FCGEC `operation` (one dict per reference).

    Within a reference, `Switch` (a permutation: new[i] = old[perm[i]]) applies first;
    `Delete`, `Insert` and `Modify` positions then refer to the switched sentence. Insert
    puts its label after the character at `pos`; Modify `MOD_k` replaces k characters from
    `pos`. A list of labels gives alternatives: variant j uses label j of each edit.
    """
    targets: list[str] = []
    for op in ops:
        for j in range(_n_variants(op)):
            t = _apply_fcgec_op(sentence, op, j)
            if t not in targets:
                targets.append(t)
    return targets


def _label(edit: dict, j: int) -> str:
    lab = edit["label"]
    if isinstance(lab, list):
        return lab[min(j, len(lab) - 1)] if lab else ""
    return str(lab)


def _n_variants(op: dict) -> int:
    labels = [e["label"] for k in ("Insert", "Modify") for e in op.get(k, [])]
    return max([len(x) for x in labels if isinstance(x, list)] + [1])


def _apply_fcgec_op(sentence: str, op: dict, j: int) -> str:
    chars = list(sentence)
    if "Switch" in op:
        perm = [int(k) for k in op["Switch"]]
        if sorted(perm) != list(range(len(chars))):
            raise ValueError(f"Switch lists {len(perm)} positions, not a permutation of the "
                             f"sentence's {len(chars)} characters")
        chars = [chars[k] for k in perm]
    deleted = {int(k) for k in op.get("Delete", [])}
    inserts = {int(e["pos"]): _label(e, j) for e in op.get("Insert", [])}
    modifies = {}
    for e in op.get("Modify", []):
        m = re.match(r"MOD_(\d+)", str(e.get("tag", "")))
        lab = _label(e, j)
        modifies[int(e["pos"])] = (int(m.group(1)) if m else len(lab), lab)
    if any(not -1 <= p < len(chars) for p in [*deleted, *inserts, *modifies]):
        raise ValueError(f"a position is outside the sentence ({len(chars)} characters)")
    out, i = [inserts.get(-1, "")], 0
    while i < len(chars):
        if i in modifies:
            k, lab = modifies[i]
            out.append(lab)
            i += max(k, 1)
            continue
        if i not in deleted or i in inserts:
            out.append(chars[i])
        out.append(inserts.get(i, ""))
        i += 1
    return "".join(out)
