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
    p.add_argument("--plan", action="store_true",
                   help="print parameter counts and the estimated peak memory (LoRA and QLoRA) from "
                        "the model's config.json alone, then exit without reading weights or data")
    p.set_defaults(func=run)


def run(args) -> int:
    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides
    if args.plan:  # the plan reads no data: any `data` will do, none is required
        from zhlora.train.plan import print_plan

        print_plan(load_config(config, [*overrides, "data=(not read by --plan)"]))
        return 0
    cfg = load_config(config, overrides)
    train(cfg)
    return 0
