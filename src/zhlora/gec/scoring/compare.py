"""Corpus-level span-based correction scores, as ChERRANT's `compare_m2_for_evaluation.py`
computes them with its defaults (span correction, beta 0.5).

Per sentence, the edits of every hypothesis annotator are compared with those of every
reference annotator. An edit is the key (start, end, correction without spaces); keys repeat
when several alignments of one annotator share an edit, and repeats count:
TP += number of reference copies of each matched hypothesis key, FP += number of hypothesis
copies of each unmatched key, FN += number of reference copies of each reference key the
hypothesis lacks. Noop edits count for nothing. A sentence whose only reference annotator
has a single NA edit (`无法标注`) is skipped (0/0/0).
The (hyp, ref) pair kept for a sentence is the one with the best F on the running corpus
totals (P, R and F rounded to 4 places, as ChERRANT does), then higher TP, lower FP, lower
FN, then the first pair in file order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

EditKey = tuple[int, int, str]
Annotator = dict[EditKey, list[str]]  # key -> types, one per copy


@dataclass(frozen=True)
class SentenceScore:
    """Counts kept for sentence `n` (1-based) and the annotators that gave them."""
    n: int
    tp: int
    fp: int
    fn: int
    hyp_annotator: int = 0
    ref_annotator: int = 0
    skipped: bool = False  # reference is 无法标注


@dataclass
class Score:
    """Corpus counts and ChERRANT's P/R/F (rounded to 4 places; P is 1.0 when FP is 0 and
    R is 1.0 when FN is 0). `notes` says what was repaired (missing lines, empty blocks)."""
    tp: int
    fp: int
    fn: int
    p: float
    r: float
    f: float
    beta: float = 0.5
    sentences: list[SentenceScore] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def f05(self) -> float:
        return self.f

    def as_dict(self) -> dict:
        """Plain dict for JSON reports (without the per-sentence list)."""
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "p": self.p, "r": self.r,
                "f05" if self.beta == 0.5 else f"f{self.beta}": self.f,
                "sentences": len(self.sentences), "notes": list(self.notes)}


def f_score(tp: int, fp: int, fn: int, beta: float = 0.5) -> tuple[float, float, float]:
    """ChERRANT's computeFScore: (P, R, F_beta), each rounded to 4 places."""
    p = float(tp) / (tp + fp) if fp else 1.0
    r = float(tp) / (tp + fn) if fn else 1.0
    f = float((1 + beta ** 2) * p * r) / ((beta ** 2) * p + r) if p + r else 0.0
    return round(p, 4), round(r, 4), round(f, 4)


def parse_block(block: str) -> dict[int, Annotator]:
    """M2 block -> {annotator id: {edit key: [type, ...]}}; a block without edits is a
    single noop annotator 0."""
    out: dict[int, Annotator] = {}
    for line in block.split("\n"):
        if not line.startswith("A "):
            continue
        fields = line[2:].split("|||")
        start, end = (int(x) for x in fields[0].split()[:2])
        key = (start, end, fields[2].replace(" ", ""))
        out.setdefault(int(fields[-1]), {}).setdefault(key, []).append(fields[1])
    return out or {0: {(-1, -1, "-NONE-"): ["noop"]}}


def compare_annotators(hyp: Annotator, ref: Annotator) -> tuple[int, int, int]:
    tp = fp = fn = 0
    for key, types in hyp.items():
        if types[0] == "noop":
            continue
        if key in ref:
            tp += len(ref[key])
        else:
            fp += len(types)
    for key, types in ref.items():
        if types[0] != "noop" and key not in hyp:
            fn += len(types)
    return tp, fp, fn


def _not_annotatable(ref: dict[int, Annotator]) -> bool:
    if len(ref) != 1:
        return False
    edits = next(iter(ref.values()))
    return len(edits) == 1 and next(iter(edits.values()))[0] == "NA"


def best_counts(n: int, hyp: dict[int, Annotator], ref: dict[int, Annotator],
                totals: tuple[int, int, int], beta: float = 0.5) -> SentenceScore:
    """The (hyp, ref) annotator pair ChERRANT keeps for one sentence, given running totals."""
    if _not_annotatable(ref):
        return SentenceScore(n, 0, 0, 0, skipped=True)
    best, best_key = None, None
    for h_id, h_edits in hyp.items():
        for r_id, r_edits in ref.items():
            tp, fp, fn = compare_annotators(h_edits, r_edits)
            f = f_score(tp + totals[0], fp + totals[1], fn + totals[2], beta)[2]
            key = (f, tp, -fp, -fn)
            if best_key is None or key > best_key:
                best_key, best = key, SentenceScore(n, tp, fp, fn, h_id, r_id)
    return best


def score_blocks(hyp_blocks: list[str], ref_blocks: list[str], beta: float = 0.5,
                 notes: list[str] | None = None) -> Score:
    """Score aligned lists of M2 blocks (same length; see `scoring.score`)."""
    totals = (0, 0, 0)
    sentences = []
    for n, (h, r) in enumerate(zip(hyp_blocks, ref_blocks), 1):
        s = best_counts(n, parse_block(h), parse_block(r), totals, beta)
        totals = (totals[0] + s.tp, totals[1] + s.fp, totals[2] + s.fn)
        sentences.append(s)
    p, r, f = f_score(*totals, beta)
    return Score(*totals, p, r, f, beta, sentences, list(notes or []))
