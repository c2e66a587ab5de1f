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
    "zhlora.embedded.cli",   # demo / pretrain (the embedded tiny base)
]


# Optional dependencies -> the extra that installs them (pyproject.toml).
OPTIONAL = {"fastapi": "serve", "uvicorn": "serve", "gguf": "export", "pypinyin": "gec", "jieba": "gec",
            "opencc": "gec", "pycorrector": "gec", "snownlp": "gec", "tiktoken": "glm4", "gradio": "webui",
            "deepspeed": "deepspeed", "tensorboard": "train", "matplotlib": "train", "bitsandbytes": "qlora"}


def missing_dependency_message(e: ImportError) -> str | None:
    """A what-to-do message for an optional package that is not installed, else None."""
    top = (e.name or "").split(".")[0]
    if top not in OPTIONAL:
        return None
    extra = OPTIONAL[top]
    prefix = "DS_BUILD_OPS=0 " if extra == "deepspeed" else ""
    return (f"this command needs the optional package {top!r}, which is not installed; install it with\n"
            f"    {prefix}pip install 'zhlora[{extra}]'")


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
    except ImportError as e:
        msg = missing_dependency_message(e)
        if msg is None:
            raise
        print(f"zhlora {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
