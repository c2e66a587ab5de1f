"""`zhlora chat | predict | serve | webui`: thin wrappers over `zhlora.infer`."""
from __future__ import annotations

import sys
from pathlib import Path

from zhlora.cli_args import add_device_args
from zhlora.errors import ZhloraError


def register(sub) -> None:
    p = sub.add_parser("chat", help="terminal chat with streamed answers; /adapter switches adapters")
    _model_args(p, many=True)
    _gen_args(p)
    p.add_argument("--history", action="store_true",
                   help="keep the conversation history when stdin is a pipe (interactive always keeps it)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("predict", help="batched generation over a JSONL or text file (resumable)")
    _model_args(p, many=False)
    _gen_args(p)
    p.add_argument("--input", required=True, help="JSONL (instruction/input, messages, prompt/text) or text")
    p.add_argument("--output", required=True, help="JSONL output; a rerun skips lines already there")
    p.add_argument("--format", default="auto", choices=["auto", "jsonl", "text"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (one base, many adapters)")
    _model_args(p, many=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument("--max-concurrency", type=int, default=64,
                   help="requests in flight (running + queued); past it a request gets 429")
    p.add_argument("--max-tokens-cap", type=int, default=2048, help="largest max_tokens a request may ask")
    p.add_argument("--served-model-name", default="base", help="model id of the base (adapters: NAME:ADAPTER)")
    p.add_argument("--max-batch", type=int, default=16,
                   help="most sequences (any adapters, streaming or not) decoded together in one batch")
    p.add_argument("--max-loras", type=int, default=None,
                   help="most adapters in memory at once; others load from their folders when asked (LRU)")
    p.add_argument("--allow-adapter-loading", action="store_true",
                   help="enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter (reads server paths)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("webui", help="gradio chat page (needs the optional extra: pip install 'zhlora[webui]')")
    _model_args(p, many=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.set_defaults(func=cmd_webui)


def _model_args(p, many: bool) -> None:
    p.add_argument("--model", default=None, help="base model folder (default: the adapter's base_model)")
    p.add_argument("--adapter", action="append" if many else "store", default=[] if many else None,
                   metavar="NAME=DIR" if many else "[NAME=]DIR",
                   help="PEFT LoRA adapter or P-Tuning v2 folder" + (" (repeatable)" if many else ""))
    p.add_argument("--template", default=None, help="chat template (default: adapter metadata, else family)")
    add_device_args(p)
    p.add_argument("--allow-bin", action="store_true", help="allow pickled .bin weights (weights_only load)")


def _gen_args(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)


def parse_adapters(specs) -> dict[str, Path]:
    """`NAME=DIR` or `DIR` (name = the folder's name) -> {name: folder} (see infer/adapters.py)."""
    from zhlora.infer.adapters import parse_adapter_specs

    return parse_adapter_specs(specs)


def _overrides(args) -> dict:
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
            "repetition_penalty": args.repetition_penalty, "seed": args.seed}


def _engine(args, adapters: dict, **kw):
    from transformers.utils import logging as hf_logging

    from zhlora.infer.engine import Engine

    hf_logging.disable_progress_bar()  # "Loading weights" bars would mix with chat output

    engine = Engine.load(args.model, adapters=adapters, template=args.template, dtype=args.dtype,
                         device=args.device, allow_bin=args.allow_bin,
                         quantization=args.quantization, **kw)
    say_templates(engine, args.template)
    return engine


def say_templates(engine, explicit: str | None) -> None:
    """Which chat template each model uses, and why, on stderr (stdout may be the answers)."""
    base = engine.adapters.base
    if explicit:
        print(f"template: {explicit} (--template)", file=sys.stderr)
        return
    if base is not None:
        print(f"template (base): {base.template_choice}", file=sys.stderr)
    for name in engine.adapter_names:
        rec = engine.record(name)
        print(f"template ({name}): {rec.template.name} "
              f"({'the adapter metadata' if rec.meta.get('template') else 'the base'})", file=sys.stderr)


def cmd_chat(args) -> int:
    from zhlora.infer.chat import chat_main

    adapters = parse_adapters(args.adapter)
    engine = _engine(args, adapters)
    return chat_main(engine, next(iter(adapters), None), _overrides(args), args.history)


def cmd_predict(args) -> int:
    from zhlora.infer.predict import run_predict

    adapters = parse_adapters(args.adapter)
    engine = _engine(args, adapters)
    name = next(iter(adapters), None)
    opts = engine.default_options(name).replace(**_overrides(args))
    s = run_predict(engine, args.input, args.output, name, opts, args.batch_size, args.format, args.overwrite)
    print(f"predict: {s.generated} generated, {s.already_done} already in {args.output}, "
          f"{s.bad_lines} bad input line(s) skipped, {s.seconds:.1f}s", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from zhlora.infer.server import ServeConfig, serve

    if min(args.max_concurrency, args.max_tokens_cap, args.max_batch, args.max_loras or 1) < 1:
        raise ZhloraError("--max-concurrency, --max-tokens-cap, --max-batch and --max-loras must be >= 1")
    engine = _engine(args, parse_adapters(args.adapter), max_batch=args.max_batch, max_loras=args.max_loras)
    serve(engine, ServeConfig(args.host, args.port, args.api_key, args.max_concurrency, args.max_tokens_cap,
                              args.served_model_name, args.max_batch, args.allow_adapter_loading))
    return 0


def cmd_webui(args) -> int:
    from zhlora.infer.webui import require_gradio, webui_main

    require_gradio()  # before the (slow) model load
    return webui_main(_engine(args, parse_adapters(args.adapter)), args.host, args.port)


__all__ = ["register", "parse_adapters"]
