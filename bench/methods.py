"""Trainable parameters and training-step time of LoRA, DoRA and P-Tuning v2 on one ~30M model.

    OMP_NUM_THREADS=1 .venv/bin/python bench/methods.py [--rounds 9] [--threads 1]

One native ChatGLM2 (THUDM's layout, zhlora's own modeling code) of ~30M parameters, random,
built from a config; each method's model is built by the training code itself from a recipe
(`zhlora.train.sft.build_model`: the demo's LoRA settings, r 16, alpha 32, dropout 0, all
linear layers; DoRA the same with `use_dora=true`; P-Tuning v2 `method=ptuning`, pre_seq_len
128, when this build has it -- `zhlora.train.ptuning`). A training step is forward with
labels, backward and an AdamW step on one fixed batch of `--rows` x `--length` tokens, fp32 on
the CPU. The methods take turns step by step (interleaved, so a change in the machine's load
hits them alike); the first round is warm-up and dropped; the table gives the median step time
and its ratio to LoRA's.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the demo's LoRA recipe (zhlora.embedded.demo.LORA_SETTINGS) without the data side
LORA = ["lora_r=16", "lora_alpha=32", "lora_dropout=0.0", "lora_target=all"]
METHODS = {"LoRA": LORA, "DoRA": [*LORA, "use_dora=true"], "P-Tuning v2": ["method=ptuning", "pre_seq_len=128"]}


def build(base: Path, overrides: list[str]):
    """The model `zhlora train` would train for this recipe, or None when this build lacks the method."""
    from zhlora.families import family_of
    from zhlora.models.loading import load_tokenizer
    from zhlora.train import sft
    from zhlora.errors import ConfigError
    from zhlora.train.config import load_config

    try:
        cfg = load_config(None, [f"model={base}", "data=unused.jsonl", *overrides])
    except ConfigError as e:       # e.g. method=ptuning before P-Tuning v2 landed
        print(f"  skipped {overrides}: {str(e).splitlines()[0]}")
        return None
    family, tok = family_of(base), load_tokenizer(base)
    if getattr(cfg, "method", "lora") == "ptuning":
        from zhlora.train.ptuning import build_model

        return build_model(cfg, family, tok)
    return sft.build_model(cfg, family, tok)[0]


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Stepper:
    """One training step (forward + backward + AdamW) of a model on a fixed batch."""

    def __init__(self, model, ids: torch.Tensor):
        self.model, self.ids = model.train(), ids
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        self.times: list[float] = []

    def step(self) -> None:
        t = time.perf_counter()
        self.model(input_ids=self.ids, labels=self.ids).loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9, help="timed steps per method, after one warm-up (default 9)")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from zhlora.models.chatglm.tiny import make_tiny_chatglm

    base = make_tiny_chatglm(Path(tempfile.mkdtemp()) / "base", "chatglm2", hidden=512, layers=10, heads=8,
                             kv_groups=2, tokenizer_dir=ROOT / "tests" / "assets" / "chatglm" / "v2")
    steppers, total = {}, 0
    ids = torch.randint(5, 60, (a.rows, a.length), generator=torch.Generator().manual_seed(0))
    for name, overrides in METHODS.items():
        model = build(base, overrides)
        if model is not None:
            total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and "prefix" not in n)
            steppers[name] = Stepper(model, ids)
    for _ in range(a.rounds + 1):
        for s in steppers.values():
            s.step()
    ref = statistics.median(steppers["LoRA"].times[1:])
    print(f"\nnative ChatGLM2, {total / 1e6:.1f}M base parameters, batch {a.rows}x{a.length}, fp32, "
          f"{a.threads} thread(s), median of {a.rounds} steps\n")
    print("| method | trainable params | % of base | step s (median) | vs LoRA |\n|---|---|---|---|---|")
    for name, s in steppers.items():
        med, n = statistics.median(s.times[1:]), trainable(s.model)
        print(f"| {name} | {n:,} | {100 * n / total:.2f}% | {med:.3f} | {med / ref:.2f}x |")


if __name__ == "__main__":
    main()
