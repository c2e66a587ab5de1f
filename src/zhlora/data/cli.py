"""`zhlora data check` and `zhlora data convert`: thin wrappers over `zhlora.data.readers`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from zhlora.data import stats
from zhlora.data.readers import ALIASES, FORMATS, FileResult, read_conversations, read_file
from zhlora.errors import ZhloraError
from zhlora.outputs import atomic_write_text, check_output_free

FORMAT_CHOICES = ["auto", *FORMATS, *ALIASES]
FORMAT_HELP = f"one of {', '.join(FORMAT_CHOICES)} (default: auto, detected per file)"
SHOW_SKIPPED = 20


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="check or convert instruction data files",
                              description="Check or convert instruction data files.")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: p.print_help() or 1)

    c = sub.add_parser("check", help="report formats, turns, token lengths and every bad record",
                       description="Report per file: format, records, turns, token lengths "
                                   "(with --model) and every problem. Exit 1 when problems exist.")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--format", default="auto", choices=FORMAT_CHOICES, metavar="FORMAT", help=FORMAT_HELP)
    c.add_argument("--model", metavar="DIR", help="HF model folder: adds a token-length histogram")
    c.add_argument("--template", help="chat template (default: the model family's)")
    c.add_argument("--cutoff-len", type=int, default=1024, help="count records longer than this")
    c.add_argument("--batch-size", type=int, default=4, help="rows per batch (for the padded-position count)")
    c.add_argument("--train-on", choices=["all", "last"], default="all",
                   help="which assistant turns are trained (for the trained-token count)")
    c.set_defaults(func=run_check)

    v = sub.add_parser("convert", help="convert data files to zhlora JSONL",
                       description="Read data files in any supported format and write zhlora JSONL.")
    v.add_argument("files", nargs="+", metavar="IN")
    v.add_argument("-o", "--output", required=True, metavar="OUT.jsonl")
    v.add_argument("--format", default="auto", choices=FORMAT_CHOICES, metavar="FORMAT", help=FORMAT_HELP)
    v.add_argument("--skip-bad", action="store_true", help="drop bad records instead of failing")
    v.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    v.set_defaults(func=run_convert)


# -- convert -------------------------------------------------------------------------------
def run_convert(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.is_dir():
        raise ZhloraError(f"output {out} is a folder; give a file name such as {out / 'data.jsonl'}")
    check_output_free(out, args.overwrite)
    result = read_conversations(args.files, args.format, skip_bad=args.skip_bad)
    for path, fmt in result.formats.items():
        how = "detected" if args.format == "auto" else "given"
        print(f"{path}: format {fmt} ({how})")
    lines = [json.dumps(c.to_json(), ensure_ascii=False) + "\n" for c in result.conversations]
    atomic_write_text(out, "".join(lines))
    for p in result.problems[:SHOW_SKIPPED]:
        print(f"  skipped {p}")
    if len(result.problems) > SHOW_SKIPPED:
        print(f"  ... and {len(result.problems) - SHOW_SKIPPED} more (`zhlora data check` lists all)")
    print(f"wrote {len(lines)} conversation(s) to {out}"
          + (f"; skipped {result.skipped} bad record(s)" if result.skipped else ""))
    return 0


# -- check -----------------------------------------------------------------------------------
def run_check(args: argparse.Namespace) -> int:
    if args.template and not args.model:
        raise ZhloraError("--template needs --model (the tokenizer to count tokens with)")
    if args.cutoff_len < 1:
        raise ZhloraError(f"--cutoff-len must be a positive number of tokens, got {args.cutoff_len}")
    tokenizer, template = _tokenizer_and_template(args.model, args.template) if args.model else (None, None)
    total_problems = total_convs = 0
    for path in args.files:
        fr = read_file(path, args.format)
        _print_file(fr, args, tokenizer, template)
        total_problems += len(fr.problems)
        total_convs += len(fr.conversations)
    print(f"\n{len(args.files)} file(s): {total_convs} good conversation(s), "
          f"{total_problems} problem(s)")
    return 1 if total_problems else 0


def _tokenizer_and_template(model_dir: str, name: str | None):
    from zhlora.models.loading import load_tokenizer
    from zhlora.templates import template_for_model

    if not Path(model_dir).is_dir():
        raise ZhloraError(f"--model {model_dir}: no such folder; give a Hugging Face model folder")
    choice = template_for_model(model_dir, name)
    print(f"template: {choice}")
    return load_tokenizer(model_dir), choice.template


def _print_file(fr: FileResult, args, tokenizer, template) -> None:
    how = "detected" if fr.detected else "given"
    print(f"== {fr.path}")
    print(f"format: {fr.format} ({how})")
    print(f"records: {fr.records} ({len(fr.conversations)} good, {fr.skipped} with problems)")
    convs = fr.conversations
    if convs:
        print("turns per conversation:")
        rows = [(f"{t} turn" + ("s" if t > 1 else ""), n) for t, n in stats.turn_histogram(convs).items()]
        print("\n".join("  " + line for line in stats.bars(rows)))
    if convs and tokenizer is not None:
        _print_tokens(convs, args, tokenizer, template)
    if fr.problems:
        print(f"problems ({len(fr.problems)}):")
        print("\n".join(f"  {p}" for p in fr.problems))


def _print_tokens(convs, args, tokenizer, template) -> None:
    ts = stats.token_stats(convs, tokenizer, template, args.cutoff_len, args.train_on)
    print(f"tokens per record (template {template.name}, tokenizer {args.model}):")
    print(f"  {ts.summary()}")
    rows = [(f"{lo}-{hi}", n) for lo, hi, n in stats.length_histogram(ts.lengths)]
    print("\n".join("  " + line for line in stats.bars(rows)))
    pct = 100.0 * len(ts.truncated) / len(convs)
    print(f"cutoff_len {args.cutoff_len} would truncate {len(ts.truncated)} of {len(convs)} "
          f"record(s) ({pct:.1f}%)" + (f", e.g. {ts.truncated[0]}" if ts.truncated else "")
          + (f", losing {ts.lost_label_tokens} trained token(s)" if ts.truncated else ""))
    print(f"trained tokens (train_on={args.train_on}, after cutoff): {ts.trained_tokens}")
    pad = stats.padded_positions(ts.lengths, args.cutoff_len, args.batch_size)
    print(f"padded positions per epoch at batch size {args.batch_size}: padding to the longest "
          f"{pad['padded']} ({100.0 * pad['padded'] / pad['real']:.0f}% of the {pad['real']} real tokens), "
          f"packed rows padded {pad['packed']} (padding_free=false), "
          "padding_free 0 (LLaMA/Qwen2/GLM-4, packed or not)")
    print(f"the template adds {stats.overhead_line(stats.prompt_overhead(convs, tokenizer, template))}")
    enc = template.encode(convs[0], tokenizer, train_on=args.train_on)
    print(f"example ({convs[0].origin}; special tokens shown, trained tokens in [[...]]):")
    print("\n".join("  | " + line for line in stats.shown_example(enc.input_ids, enc.labels, tokenizer).split("\n")))
    if ts.untrained:
        print(f"  {len(ts.untrained)} record(s) keep no trained token after the cutoff, "
              f"e.g. {ts.untrained[0]}; raise --cutoff-len or shorten them")
