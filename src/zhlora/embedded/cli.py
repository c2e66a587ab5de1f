"""`zhlora demo` and `zhlora pretrain`: the command lines of the embedded base and its demo."""
from __future__ import annotations

from zhlora.embedded.pretrain import PretrainConfig
from zhlora.gec.prompt import GEC_INSTRUCTION


def register(sub) -> None:
    register_demo(sub)
    register_pretrain(sub)


def register_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on the embedded tiny Chinese base")
    p.add_argument("--workdir", default=".demo", help="where the demo keeps its outputs (default .demo)")
    p.add_argument("--base", default=None, help="base model folder (default: the embedded tiny-zh)")
    p.add_argument("--gec-pairs", type=int, default=6000, help="synthetic training pairs (default 6000)")
    p.add_argument("--gec-steps", type=int, default=600, help="GEC LoRA steps (default 600)")
    p.add_argument("--punct-steps", type=int, default=80, help="punctuation LoRA steps (default 80)")
    p.add_argument("--test-pairs", type=int, default=300, help="held-out synthetic test pairs (default 300)")
    p.add_argument("--sighan-limit", type=int, default=0,
                   help="only the first N SIGHAN-2015 lines (default 0: all 707)")
    p.add_argument("--decoding", default="rescore,confusion",
                   help="comma list of decoders to evaluate with (default both): rescore, confusion "
                   "candidates judged on both sides of the character; confusion, the left-to-right "
                   "greedy decoder, where the adapter's own judgement is all there is")
    p.add_argument("--margin", type=float, default=None,
                   help="decoding margin for both test sets, with a single --decoding (default: chosen "
                   "on a dev set of training sentences per decoder and metric: rescore 8 for F0.5 "
                   "on the synthetic set, 5 for SIGHAN's F1; confusion 4 and 3)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default: CUDA when available, else CPU) | cpu | cuda")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from zhlora.embedded.demo import run

    return run(args)


def register_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="train the embedded tiny Chinese base model from scratch")
    defaults = PretrainConfig()
    p.add_argument("--output", default=defaults.output, help="model folder to write")
    for name in ("hidden", "layers", "heads", "seq_len", "batch_size", "steps", "limit_paragraphs",
                 "seed", "log_every", "warmup", "threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("lr", "max_minutes", "instruct_share", "task_copy_share", "weight_decay"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    p.add_argument("--task-instruction", default=GEC_INSTRUCTION,
                   help="the downstream task's instruction, shown with unchanged sentences on "
                   "--task-copy-share of the copy pairs (default: the GEC instruction; '' for none)")
    p.add_argument("--init", default="", help="continue training this model folder (default: from scratch)")
    p.add_argument("--save-dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run_pretrain)


def run_pretrain(args) -> int:
    names = PretrainConfig.__dataclass_fields__
    from zhlora.embedded.pretrain import pretrain

    cfg = PretrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    pretrain(cfg, log=lambda m: print(m, flush=True))
    return 0
