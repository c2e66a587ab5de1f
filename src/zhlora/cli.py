"""`zhlora` command line: one subcommand per pipeline stage, each a thin wrapper.

Every command module exposes `register(subparsers)` which adds its parser and sets
`func(args) -> int`. A `ZhloraError` is printed as a message (no traceback), exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from zhlora.errors import ZhloraError

# Each module keeps its heavy imports (torch, transformers) inside its functions.
COMMAND_MODULES = [
    "zhlora.data.cli",       # data check / data convert
    "zhlora.train.cli",      # train
    "zhlora.merge.cli",      # merge / verify / export
    "zhlora.infer.cli",      # chat / predict / serve / webui
    "zhlora.gec.cli",        # gec synth / score / sighan / eval / convert
    "zhlora.demo",           # demo
    "zhlora.pretrain",       # pretrain (the embedded tiny base)
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zhlora", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except ZhloraError as e:
        print(f"zhlora {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
