"""`zhlora train CONFIG.yaml [key=value ...]`."""
from __future__ import annotations

import argparse

from zhlora.train.config import FIELDS


def register(sub) -> None:
    keys = ", ".join(FIELDS)
    p = sub.add_parser("train", help="LoRA (or P-Tuning v2) fine-tuning from a YAML recipe",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a LoRA adapter (method=ptuning: a P-Tuning v2 prefix, ChatGLM "
                                   "family).\n\nexample:\n  zhlora train "
                                   "examples/tiny_llama_lora.yaml max_steps=50 learning_rate=3e-4\n\n"
                                   f"recipe keys: {keys}")
    p.add_argument("config", nargs="?", help="YAML recipe (optional if every key is given as key=value)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override recipe keys")
    p.set_defaults(func=run)


def run(args) -> int:
    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides
    train(load_config(config, overrides))
    return 0
