"""`zhlora merge`, `zhlora verify`, `zhlora export gguf`: thin wrappers over zhlora.merge."""
from __future__ import annotations

import argparse

from zhlora.cli_args import add_device_args


def register(sub) -> None:
    p = sub.add_parser("merge", help="merge LoRA adapters into the base, streaming shard by shard",
                       description="Merge one or more LoRA adapters (applied in the given order) into a "
                                   "base model; memory stays near one tensor, not the model.")
    p.add_argument("--base", required=True, help="base model folder (config.json + weights)")
    p.add_argument("--adapter", required=True, action="append", help="adapter folder; repeat to stack")
    p.add_argument("--output", required=True, help="folder to write the merged model to")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                   help="output dtype (default: the base's)")
    p.add_argument("--max-shard-size", default="2GB", help="largest output shard (default 2GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--allow-bin", action="store_true",
                   help="accept pickled .bin weights (loaded with torch.load(weights_only=True))")
    p.add_argument("--no-fingerprint-check", action="store_true",
                   help="skip the check that each adapter was trained on this base's config")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_merge)

    v = sub.add_parser("verify", help="compare merged-model logits with base+adapters in PEFT")
    v.add_argument("--base", required=True)
    v.add_argument("--adapter", required=True, action="append")
    v.add_argument("--merged", required=True)
    v.add_argument("--tolerance", type=float, default=None,
                   help="max abs logit difference (default 1e-4 for float32 output; for float16/bfloat16 "
                        "1e-2/4e-2 times max(1, largest |logit|))")
    v.add_argument("--allow-bin", action="store_true")
    add_device_args(v, quantization=False, dtype=False)  # both sides run in float32
    v.set_defaults(func=run_verify)

    e = sub.add_parser("export", help="export a merged model to another format")
    esub = e.add_subparsers(dest="format", metavar="FORMAT", required=True)
    g = esub.add_parser("gguf", help="write a llama.cpp GGUF file (LLaMA, Qwen2, ChatGLM2/3, GLM-4, tiny-zh)")
    g.add_argument("--model", required=True, help="merged model folder")
    g.add_argument("--output", required=True, help="the .gguf file to write")
    g.add_argument("--type", choices=["f32", "f16", "q8_0"], default="f16",
                   help="storage of 2-D weights (norms and biases stay f32); default f16")
    g.add_argument("--overwrite", action="store_true")
    g.set_defaults(func=run_export_gguf)


def run_merge(args: argparse.Namespace) -> int:
    from zhlora.merge.merge import merge_adapters, parse_size
    from zhlora.models.device import parse_dtype

    res = merge_adapters(args.base, args.adapter, args.output,
                         dtype=parse_dtype(args.dtype) if args.dtype else None,
                         max_shard_bytes=parse_size(args.max_shard_size), overwrite=args.overwrite,
                         allow_bin=args.allow_bin, check_fingerprint=not args.no_fingerprint_check,
                         progress=not args.no_progress)
    print(f"merged {len(args.adapter)} adapter(s) into {res.merged_tensors} of {res.tensors} tensors; "
          f"wrote {res.shards} shard(s), {str(res.dtype).removeprefix('torch.')}, "
          f"vocab rows {res.vocab_rows} -> {res.output}")
    for note in qlora_notes(args.adapter):
        print(note)
    return 0


def qlora_notes(adapters) -> list[str]:
    """A QLoRA adapter was trained against the 4-/8-bit base; merged, it sits on the full-precision
    weights, which the user should know (outputs move slightly, as after any requantization)."""
    from zhlora.runinfo import read_adapter_meta

    notes = []
    for folder in adapters:
        q = read_adapter_meta(folder).get("quantization")
        if q:
            notes.append(f"note: {folder} was trained on a {q.get('bits')}-bit {q.get('quant_type', '')} base "
                         "(QLoRA). The merged model is that adapter on the unquantized base weights, not "
                         "the quantized forward it was trained with; its outputs can differ slightly from "
                         "`zhlora chat --quantization " + f"{q.get('bits')}bit --adapter {folder}`.")
    return notes


def run_verify(args: argparse.Namespace) -> int:
    from zhlora.merge.verify import verify_merge

    rep = verify_merge(args.base, args.adapter, args.merged, args.tolerance, allow_bin=args.allow_bin,
                       device=args.device)
    print(rep.summary())
    return 0 if rep.ok else 1


def run_export_gguf(args: argparse.Namespace) -> int:
    from zhlora.merge.gguf import export_gguf

    info = export_gguf(args.model, args.output, args.type, overwrite=args.overwrite)
    print(f"wrote {info.path} (llama.cpp architecture {info.arch}, {info.tensors} tensors, {info.type}, "
          f"{info.bytes / 1e6:.1f} MB, {info.vocab} tokens, tokenizer {info.tokenizer}, "
          f"chat template {'included' if info.chat_template else 'none in the folder'})")
    return 0
