"""`zhlora gec synth|convert|score|sighan|eval`: thin wrappers over the GEC library.

Heavy modules (jieba, the scorer, the inference engine) are imported inside each command so
`zhlora --help` stays fast.
"""
from __future__ import annotations

import sys
from pathlib import Path

from zhlora.cli_args import add_device_args
from zhlora.errors import ZhloraError

EVAL_FORMATS = ("auto", "para", "m2", "nlpcc18", "mucgec", "fcgec", "cged", "sighan", "jsonl")
CONVERT_FORMATS = ("auto", "nlpcc18", "mucgec", "fcgec", "cged", "sighan", "m2", "para", "jsonl")


def register(subparsers) -> None:
    gec = subparsers.add_parser("gec", help="Chinese grammatical error correction: synthetic data, "
                                "format conversion, scoring, evaluation",
                                description="Chinese grammatical error correction (CGEC) tools.")
    gec.set_defaults(func=lambda args: (gec.print_help(), 1)[1])
    sub = gec.add_subparsers(dest="gec_command", metavar="SUBCOMMAND")
    _add_synth(sub)
    _add_convert(sub)
    _add_score(sub)
    _add_sighan(sub)
    _add_eval(sub)


# -- synth --------------------------------------------------------------------------
def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="make (wrong, correct) training pairs from clean sentences",
                       description="Corrupt clean Chinese sentences (one per line) into GEC "
                       "training pairs: homophone / similar-glyph characters, inserted and "
                       "dropped characters and words, swapped words, punctuation errors.")
    p.add_argument("--input", required=True, help="clean sentences, one per line (UTF-8)")
    p.add_argument("--output", required=True, help="pairs file to write")
    p.add_argument("--format", choices=("alpaca", "para"), default="alpaca",
                   help="alpaca JSONL with the GEC prompt (default) or para `id<TAB>wrong<TAB>right`")
    p.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical output")
    p.add_argument("--error-rate", type=float, default=0.03,
                   help="chance that a Han character starts an edit (>= 1 edit per corrupted "
                   "sentence; default 0.03)")
    p.add_argument("--keep-ratio", type=float, default=0.3,
                   help="share of sentences left unchanged (default 0.3)")
    p.add_argument("--max-edits", type=int, default=4, help="edits per sentence at most (default 4)")
    p.add_argument("--mix", default="", help="error-type weights, e.g. char_pinyin=3,word_swap=1 "
                   "(types not named get 0; default: the built-in mix)")
    p.add_argument("--substitute", choices=("uniform", "frequent"), default="uniform",
                   help="how a wrong character is picked from its confusion set: uniform (default), or "
                   "frequent (in proportion to its count in the input text + 1, as writers slip to "
                   "characters they use often)")
    p.add_argument("--confusion", choices=("auto", "pycorrector", "pypinyin"), default="auto",
                   help="confusion-set source (auto: pycorrector's files if installed)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args) -> int:
    from zhlora.gec.synth import DEFAULT_MIX, SynthConfig, parse_mix, run_synth

    cfg = SynthConfig(seed=args.seed, error_rate=args.error_rate, keep_ratio=args.keep_ratio,
                      max_edits=args.max_edits, substitute=args.substitute,
                      mix=parse_mix(args.mix) if args.mix else dict(DEFAULT_MIX))
    stats, confusion = run_synth(args.input, args.output, cfg, fmt=args.format,
                                 confusion=args.confusion, overwrite=args.overwrite,
                                 progress=sys.stderr.isatty())
    print(f"confusion set: {confusion.summary()}")
    print(stats.summary())
    print(f"wrote {stats.sentences} pairs to {args.output} ({args.format})")
    return 0


# -- convert ------------------------------------------------------------------------
def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="public CGEC data (NLPCC18, MuCGEC, FCGEC, CGED, SIGHAN) "
                       "-> para or alpaca JSONL")
    p.add_argument("--input", required=True, help="the public data file")
    p.add_argument("--format", choices=CONVERT_FORMATS, default="auto", help="input format")
    p.add_argument("--output", required=True, help="file to write")
    p.add_argument("--to", choices=("auto", "para", "alpaca", "both"), default="auto",
                   help="output format: para, alpaca JSONL with the GEC prompt, or both (para to "
                   "OUTPUT, alpaca to OUTPUT with suffix .jsonl); auto: alpaca for *.jsonl/*.json")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from zhlora.gec.formats import alpaca_text, load, para_text
    from zhlora.outputs import atomic_write_text, check_output_free

    out = Path(args.output)
    to = args.to
    if to == "auto":
        to = "alpaca" if out.suffix.lower() in (".jsonl", ".json") else "para"
    targets = {"para": [(out, "para")], "alpaca": [(out, "alpaca")],
               "both": [(out, "para"), (out.with_suffix(".jsonl"), "alpaca")]}[to]
    if to == "both" and out.suffix.lower() == ".jsonl":
        raise ZhloraError(f"--to both writes para to {out} and alpaca to {out}; give --output "
                          "a name not ending in .jsonl (e.g. train.para)")
    for path, _ in targets:
        check_output_free(path, args.overwrite)
    examples, fmt = load(args.input, args.format)
    missing = [e.id for e in examples if not e.targets]
    if missing:
        raise ZhloraError(f"{args.input}: {len(missing)} of {len(examples)} records have no gold "
                          f"correction (first: {missing[0]!r}); a test set without answers cannot "
                          "be converted to training or evaluation data")
    for path, kind in targets:
        if kind == "para":
            atomic_write_text(path, para_text(examples))
            print(f"wrote {len(examples)} records to {path} (para)")
        else:
            text, skipped = alpaca_text(examples)
            atomic_write_text(path, text)
            note = f"; {skipped} left out (target 无法标注)" if skipped else ""
            print(f"wrote {len(examples) - skipped} records to {path} (alpaca JSONL{note})")
    changed = sum(1 for e in examples if any(t != e.source for t in e.targets))
    print(f"read {len(examples)} records from {args.input} as {fmt}: {changed} with corrections, "
          f"{len(examples) - changed} already correct")
    return 0


# -- score / sighan -------------------------------------------------------------------
def _add_score(sub) -> None:
    p = sub.add_parser("score", help="ChERRANT char-level P/R/F0.5 of a hypothesis against references")
    p.add_argument("--hyp", required=True, help="hypothesis: para `id<TAB>source<TAB>prediction` or M2")
    p.add_argument("--ref", required=True, help="references: para `id<TAB>source<TAB>target...` or M2")
    p.add_argument("--format", choices=("para", "m2"), default="para", help="input format (both files)")
    p.add_argument("--m2-out", help="with para input: also write the hypothesis M2 here")
    p.set_defaults(func=cmd_score)


def cmd_score(args) -> int:
    from zhlora.gec.evaluate import score_files

    result = score_files(args.hyp, args.ref, fmt=args.format, m2_out=args.m2_out)
    print(result.table())
    return 0


def _add_sighan(sub) -> None:
    p = sub.add_parser("sighan", help="sentence-level CSC metric (pycorrector's SIGHAN-2015 definition)")
    p.add_argument("--pred", required=True, help="predictions, one per line in the gold file's order "
                   "(a line with TABs counts its last field, so eval's predictions.para works too)")
    p.add_argument("--gold", required=True, help="gold TSV `source<TAB>target` (e.g. sighan2015_test.tsv)")
    p.set_defaults(func=cmd_sighan)


def cmd_sighan(args) -> int:
    from zhlora.gec.evaluate import sighan_files

    print(sighan_files(args.pred, args.gold).table())
    return 0


# -- eval ----------------------------------------------------------------------------
def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="correct a test set with a model (+ LoRA adapter) and score it")
    p.add_argument("--model", help="base model folder (default: the adapter's base_model)")
    p.add_argument("--adapter", help="LoRA adapter (or P-Tuning v2) folder written by `zhlora train`")
    p.add_argument("--data", required=True, help="test file with gold corrections")
    p.add_argument("--format", choices=EVAL_FORMATS, default="auto", help="format of --data")
    p.add_argument("--output", help="folder for predictions, M2 and report.md "
                   "(default: gec_eval_<data name>)")
    p.add_argument("--template", help="chat template (default: from the adapter / model family)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=0,
                   help="per sentence (default: 2 x longest source + 20)")
    p.add_argument("--limit", type=int, default=0, help="only the first N sentences")
    add_device_args(p)
    p.add_argument("--decoding", choices=("free", "confusion", "rescore"), default="free",
                   help="free greedy rewriting (default); confusion: one character per source "
                   "character, a confusion candidate only when it beats the source by --margin; "
                   "rescore: confusion candidates judged on the whole sentence (both sides)")
    p.add_argument("--margin", type=float, default=None,
                   help="confusion/rescore decoding: log-probability lead a change needs "
                   "(default 1.0 for confusion, 8.0 for rescore)")
    p.add_argument("--lm-weight", type=float, default=None,
                   help="rescore: weight of the sentence's plain-text log-probability gain (default 1.0)")
    p.add_argument("--answer-weight", type=float, default=None,
                   help="rescore: weight of the left-context lead as the answer to the GEC prompt "
                   "(default 0.25)")
    p.add_argument("--top-k", type=int, default=None,
                   help="rescore: candidates per position checked on the whole sentence (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from zhlora.gec.evaluate import EvalConfig, run_eval

    if not args.model and not args.adapter:
        raise ZhloraError("gec eval needs --model, --adapter or both")
    output = args.output or f"gec_eval_{Path(args.data).stem}"
    cfg = EvalConfig(model=args.model, adapter=args.adapter, data=args.data, format=args.format,
                     output=output, template=args.template, batch_size=args.batch_size,
                     max_new_tokens=args.max_new_tokens, limit=args.limit, dtype=args.dtype,
                     device=args.device, quantization=args.quantization,
                     overwrite=args.overwrite, decoding=args.decoding, margin=args.margin,
                     lm_weight=args.lm_weight, answer_weight=args.answer_weight, top_k=args.top_k)
    result = run_eval(cfg, progress=sys.stderr.isatty())
    print(result.report)
    print(f"wrote {output}/ (predictions.para, predictions.jsonl, hyp.m2, ref.m2, report.md, "
          "metrics.json)")
    return 0
