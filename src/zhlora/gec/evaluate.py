"""`zhlora gec eval`: correct a test set with a model, clean the answers, score them.

Pipeline: load the test file (any `formats` loader) -> one GEC prompt per source
(`prompt.gec_conversation`, the prompt the training data uses) -> greedy batched generation
with `zhlora.infer.engine.Engine` -> `clean_output` -> ChERRANT char-level P/R/F0.5
(`zhlora.gec.scoring.score_para`), plus pycorrector's SIGHAN sentence metric when the set is
SIGHAN TSV or every pair keeps its length (a spelling-only set). Everything is written into
one output folder through `atomic_output_dir`:

    predictions.para   id<TAB>source<TAB>prediction   (`zhlora gec score --hyp` reads it)
    predictions.jsonl  id, source, prediction, raw model output, targets, fallback reason
    ref.para           id<TAB>source<TAB>targets...   (the references as scored)
    hyp.m2, ref.m2     ChERRANT M2 of the predictions and of the references
    metrics.json       the numbers;   report.md   the same as a markdown table
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.gec import rescore
from zhlora.gec.formats import Example, load, para_text, resolved_targets

# -- output cleaning -----------------------------------------------------------------
_SPECIAL = re.compile(r"<\|[^|<>]{1,30}\|>|</?s>|<unk>|<pad>|\[gMASK\]|\[MASK\]|<[se]op>|"
                      r"\[/?INST\]|<</?SYS>>")
_ROLE = re.compile(r"^\s*(?:assistant|Assistant|ASSISTANT|助手)\s*[:：]?\s*\n")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?|\n?```\s*$")
_LABEL = re.compile(
    r"^\s*(?:[*#>\-\s]*)(?:好的[，,。！!]?\s*)?(?:以下是|下面是|这是)?\s*"
    r"(?:修改后|改正后|修正后|纠正后|更正后|订正后|校对后|正确|改正|修改|修正|纠正|更正|输出|答案|结果|回答|"
    r"答|Output|Corrected|Correction|Answer|Result|Target)"
    r"[^：:\n]{0,12}?[：:]\s*(?:\*\*)?\s*", re.I)
_NO_ERROR = re.compile(r"^(?:原句|原文|这句话|这个句子|该句|句子|输入)?(?:本身)?(?:没有|无|不存在|并无)"
                       r"(?:任何)?(?:明显的)?(?:错误|语法错误|错别字|问题|需要修改)|^无需(?:修改|改动|更正)")
_EXPLAIN = re.compile(r"\s*[（(][^（）()]{0,40}(?:改为|改成|应为|修改|错误|错字|删除|原句)[^（）()]{0,40}[）)]\s*$")
_QUOTES = [("“", "”"), ('"', '"'), ("「", "」"), ("『", "』"), ("'", "'"), ("‘", "’"), ("《", "》")]


def clean_output(text: str, source: str) -> str:
    """The corrected sentence inside a model answer; the source when there is none."""
    return clean_with_reason(text, source)[0]


def clean_with_reason(text: str, source: str) -> tuple[str, str]:
    """-> (sentence, reason the source was kept: "" | "empty" | "too_long" | "no_error")."""
    text = _FENCE.sub("", _ROLE.sub("", _SPECIAL.sub("", text or ""))).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    while lines and _is_label_only(lines[0], source):
        lines.pop(0)  # "修改后的句子：" on its own line
    if not lines:
        return source, "empty"
    out = _strip_label(lines[0], source)
    out = _strip_quotes(out, source)
    if _EXPLAIN.search(out) and not _EXPLAIN.search(source):
        out = _EXPLAIN.sub("", out)
    if _NO_ERROR.match(out) and not _NO_ERROR.match(source):
        return source, "no_error"
    out = out.strip()
    if not out:
        return source, "empty"
    if len(out) > 2 * len(source) + 10:
        return source, "too_long"
    return out, ""


def _is_label_only(line: str, source: str) -> bool:
    rest = _strip_label(line, source)
    return rest == "" or (rest != line and rest in ("：", ":"))


def _strip_label(line: str, source: str) -> str:
    m = _LABEL.match(line)
    if not m or source.startswith(line[:m.end()].strip(" \t：:*#>-")):
        return line  # the source itself begins like a label ("正确的做法是：...")
    return line[m.end():].strip()


def _strip_quotes(text: str, source: str) -> str:
    for a, b in _QUOTES:
        if (len(text) > 2 and text.startswith(a) and text.endswith(b) and not source.startswith(a)
                and a not in text[1:-1] and b not in text[1:-1]):
            return text[1:-1].strip()
    return text


# -- scoring ---------------------------------------------------------------------------
def _md_table(headers: list[str], rows: list[list]) -> str:
    line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"  # noqa: E731
    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, rows)])


def cherrant_table(score) -> str:
    return _md_table(["TP", "FP", "FN", "P", "R", "F0.5"],
                     [[score.tp, score.fp, score.fn, f"{score.p:.4f}", f"{score.r:.4f}", f"{score.f:.4f}"]])


def sighan_table(m: dict) -> str:
    return _md_table(["acc", "P", "R", "F1", "TP", "FP", "FN", "TN", "total"],
                     [[f"{m['acc']:.4f}", f"{m['precision']:.4f}", f"{m['recall']:.4f}",
                       f"{m['f1']:.4f}", m["tp"], m["fp"], m["fn"], m["tn"], m["total"]]])


@dataclass
class Table:
    text: str
    data: dict

    def table(self) -> str:
        return self.text


def score_files(hyp, ref, fmt: str = "para", m2_out=None) -> Table:
    """`zhlora gec score`: ChERRANT P/R/F0.5 of a hypothesis file against a reference file."""
    from zhlora.gec.scoring import score_para

    if m2_out and fmt != "para":
        raise ZhloraError("--m2-out writes the hypothesis M2 converted from para; with "
                          "--format m2 the hypothesis already is M2")
    s = score_para(hyp, ref, fmt=fmt, hyp_fmt=fmt, m2_out=m2_out)
    notes = "".join(f"\nnote: {n}" for n in s.notes)
    return Table(cherrant_table(s) + notes, s.as_dict())


def read_predictions(path) -> list[str]:
    """One prediction per line; a line with TABs counts its last field."""
    from zhlora.gec.formats import read_lines

    lines = [t for _, t in read_lines(path)]
    return [ln.split("\t")[-1] for ln in lines]


def sighan_files(pred, gold) -> Table:
    """`zhlora gec sighan`: pycorrector's sentence-level metric of a prediction file."""
    from zhlora.gec.sighan import format_sighan, load_sighan_tsv, sighan_metric

    pairs = load_sighan_tsv(gold)
    preds = read_predictions(pred)
    while len(preds) > len(pairs) and preds and preds[-1] == "":
        preds.pop()
    if len(preds) != len(pairs):
        raise ZhloraError(f"{pred}: {len(preds)} prediction line(s) for {len(pairs)} sentence pairs "
                          f"in {gold}; write one prediction per pair, in the gold file's order")
    m = sighan_metric(pairs, preds)
    return Table(sighan_table(m) + "\n" + format_sighan(m), m)


def is_spelling_set(examples: list[Example], fmt: str) -> bool:
    """SIGHAN TSV, or every pair keeps its length (a CSC set): report the SIGHAN metric."""
    if fmt == "sighan":
        return True
    return all(len(resolved_targets(e)) == 1 and len(resolved_targets(e)[0]) == len(e.source)
               for e in examples)


def score_predictions(examples: list[Example], preds: list[str], sighan: bool,
                      folder: Path | None = None) -> tuple[object, dict | None]:
    """(ChERRANT Score, SIGHAN metric dict or None); writes hyp.m2/ref.m2 into `folder`."""
    from zhlora.gec.scoring import score_para
    from zhlora.gec.sighan import sighan_metric

    hyp = para_text([Example(e.id, e.source, [p]) for e, p in zip(examples, preds)]).splitlines()
    ref = para_text(examples).splitlines()
    m2 = dict(m2_out=folder / "hyp.m2", ref_m2_out=folder / "ref.m2") if folder else {}
    score = score_para(hyp, ref, **m2)
    metric = None
    if sighan:
        pairs = [(e.source, resolved_targets(e)[0]) for e in examples]
        metric = sighan_metric(pairs, preds)
    return score, metric


# -- eval ------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    data: str
    output: str
    model: str | None = None
    adapter: str | None = None
    format: str = "auto"
    template: str | None = None
    batch_size: int = 8
    max_new_tokens: int = 0       # 0: 2 x longest source + 20
    limit: int = 0                # 0: all
    dtype: str = "auto"
    device: str = "auto"          # zhlora.models.device.decide
    quantization: str | None = None   # 4bit / 8bit base (bitsandbytes)
    overwrite: bool = False
    decoding: str = "free"        # free | confusion (zhlora.gec.constrained) | rescore (zhlora.gec.rescore)
    margin: float | None = None   # confusion/rescore: lead a change needs (None: 1.0 / 8.0)
    # rescore only (None: rescore.DEFAULT_*); refused with the other decodings, which would ignore them
    lm_weight: float | None = None        # weight of the plain-text whole-sentence gain
    answer_weight: float | None = None    # weight of the answer's left-context lead
    top_k: int | None = None              # candidates checked per position

    def check(self) -> None:
        """Refuse bad options before the model is loaded."""
        if self.decoding not in ("free", "confusion", "rescore"):
            raise ZhloraError(f"unknown decoding {self.decoding!r}; use free, confusion or rescore")
        if self.batch_size < 1:
            raise ZhloraError(f"--batch-size must be at least 1, got {self.batch_size}")
        for name in ("limit", "max_new_tokens"):
            if getattr(self, name) < 0:
                raise ZhloraError(f"--{name.replace('_', '-')} must be 0 (all / automatic) or more, "
                                  f"got {getattr(self, name)}")
        if self.decoding == "free" and self.margin is not None:
            raise ZhloraError(f"--margin {self.margin} applies to --decoding confusion or rescore; free greedy "
                              "decoding has no margin (add --decoding confusion or rescore, or drop --margin)")
        if self.decoding == "rescore":
            self.rescore_options().check()
            return
        given = [f"--{k.replace('_', '-')} {v}" for k, v in self._rescore_given().items()]
        if given:
            raise ZhloraError(f"{', '.join(given)} only apply to --decoding rescore, not {self.decoding} "
                              "(add --decoding rescore, or drop them)")

    def _rescore_given(self) -> dict:
        return {k: v for k in ("lm_weight", "answer_weight", "top_k") if (v := getattr(self, k)) is not None}

    def rescore_options(self) -> rescore.RescoreOptions:
        return rescore.RescoreOptions(margin=margin_for(self), **self._rescore_given())


@dataclass
class EvalResult:
    output: Path
    score: object
    sighan: dict | None
    fallbacks: Counter = field(default_factory=Counter)
    report: str = ""


def load_test_set(cfg: EvalConfig) -> tuple[list[Example], str]:
    examples, fmt = load(cfg.data, cfg.format)
    if cfg.limit:
        examples = examples[:cfg.limit]
    missing = [e.id for e in examples if not e.targets]
    if missing:
        raise ZhloraError(f"{cfg.data}: {len(missing)} sentence(s) have no gold correction (first: "
                          f"{missing[0]!r}); gec eval needs a test set with references")
    return examples, fmt


def margin_for(cfg: EvalConfig) -> float:
    """cfg.margin, or the decoding's default (confusion 1.0, rescore 8.0)."""
    from zhlora.gec.constrained import DEFAULT_MARGIN

    if cfg.margin is not None:
        return cfg.margin
    return rescore.DEFAULT_MARGIN if cfg.decoding == "rescore" else DEFAULT_MARGIN


def generate_corrections(cfg: EvalConfig, sources: list[str], progress: bool = False) -> list[str]:
    """Raw model answers, greedy, batched."""
    from zhlora.gec.prompt import gec_conversation
    from zhlora.infer.engine import Engine, GenerationOptions

    adapters = {"gec": cfg.adapter} if cfg.adapter else None
    engine = Engine.load(cfg.model, adapters=adapters, template=cfg.template, dtype=cfg.dtype,
                         device=cfg.device, quantization=cfg.quantization)
    if cfg.decoding == "confusion":
        from zhlora.gec.constrained import correct

        return correct(engine, sources, adapter="gec" if cfg.adapter else None, margin=margin_for(cfg),
                       batch_size=cfg.batch_size, progress=progress)
    if cfg.decoding == "rescore":
        return rescore.correct_rescored(engine, sources, adapter="gec" if cfg.adapter else None,
                                        opts=cfg.rescore_options(), batch_size=cfg.batch_size, progress=progress)
    max_new = cfg.max_new_tokens or min(1024, 2 * max(len(s) for s in sources) + 20)
    opts = GenerationOptions(max_new_tokens=max_new, temperature=0.0)
    convs = [gec_conversation(s) for s in sources]
    return engine.generate(convs, adapter="gec" if cfg.adapter else None, options=opts,
                           batch_size=cfg.batch_size, progress=progress)


def run_eval(cfg: EvalConfig, progress: bool = False) -> EvalResult:
    from zhlora.outputs import atomic_output_dir, check_output_free

    cfg.check()
    check_output_free(cfg.output, cfg.overwrite)
    examples, fmt = load_test_set(cfg)
    raw = generate_corrections(cfg, [e.source for e in examples], progress)
    cleaned = [clean_with_reason(r, e.source) for r, e in zip(raw, examples)]
    preds = [c[0] for c in cleaned]
    fallbacks = Counter(c[1] for c in cleaned if c[1])
    with atomic_output_dir(cfg.output, cfg.overwrite) as tmp:
        score, metric = score_predictions(examples, preds, is_spelling_set(examples, fmt), tmp)
        result = EvalResult(Path(cfg.output), score, metric, fallbacks)
        result.report = report_markdown(cfg, fmt, len(examples), result)
        _write_outputs(tmp, examples, raw, cleaned, result)
    return result


def _write_outputs(folder: Path, examples, raw, cleaned, result: EvalResult) -> None:
    hyp = [Example(e.id, e.source, [p]) for e, (p, _) in zip(examples, cleaned)]
    (folder / "predictions.para").write_text(para_text(hyp), encoding="utf-8")
    (folder / "ref.para").write_text(para_text(examples), encoding="utf-8")
    with open(folder / "predictions.jsonl", "w", encoding="utf-8") as f:
        for e, r, (p, why) in zip(examples, raw, cleaned):
            rec = {"id": e.id, "source": e.source, "prediction": p, "raw": r, "targets": e.targets}
            if why:
                rec["fallback"] = why
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    metrics = {"cherrant": result.score.as_dict(), "sighan": result.sighan,
               "fallbacks": dict(result.fallbacks)}
    (folder / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n",
                                         encoding="utf-8")
    (folder / "report.md").write_text(result.report + "\n", encoding="utf-8")


def _decoding_line(cfg: EvalConfig) -> str:
    if cfg.decoding == "free":
        return (f"- decoding: greedy, batch {cfg.batch_size}, max new tokens "
                f"{cfg.max_new_tokens or '2 x longest source + 20'}")
    if cfg.decoding == "rescore":
        opts = cfg.rescore_options()
        return (f"- decoding: confusion candidates rescored on the whole sentence (margin {margin_for(cfg)}, "
                f"answer weight {opts.answer_weight}, lm weight {opts.lm_weight}, top-k {opts.top_k}), "
                f"batch {cfg.batch_size}")
    return f"- decoding: confusion-constrained greedy (margin {margin_for(cfg)}), batch {cfg.batch_size}"


def report_markdown(cfg: EvalConfig, fmt: str, n: int, result: EvalResult) -> str:
    changed = sum(result.fallbacks.values())
    parts = [f"# GEC evaluation: {Path(cfg.data).name}", "",
             f"- data: `{cfg.data}` ({fmt}, {n} sentences)",
             f"- model: `{cfg.model or '(from adapter)'}`; adapter: `{cfg.adapter or '(none)'}`",
             _decoding_line(cfg),
             f"- answers replaced by the source: {changed}"
             + (f" ({', '.join(f'{k} {v}' for k, v in sorted(result.fallbacks.items()))})" if changed else ""),
             "", "## ChERRANT (char level, span-based correction)", "", cherrant_table(result.score)]
    if result.sighan is not None:
        parts += ["", "## SIGHAN sentence level (pycorrector's definition)", "", sighan_table(result.sighan)]
    if result.score.notes:
        parts += ["", "Notes:", *[f"- {x}" for x in result.score.notes]]
    return "\n".join(parts)
