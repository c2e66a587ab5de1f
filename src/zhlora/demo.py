"""`zhlora demo`: the whole job on the embedded default, in minutes on a 2-core CPU.

Stages (each reused when its output already exists, so a second `make demo` is quick):
  1. a tiny LLaMA-architecture Chinese model (random weights, character tokenizer)
  2. LoRA SFT on the bundled Chinese instruction sample (examples/tiny_llama_lora.yaml)
  3. streaming merge of the adapter into the base, then `verify` (adapter == merged)
  4. answers from the base, the adapter (plugged into the base) and the merged model
The base is random until the pretrained tiny Chinese model lands (see README, roadmap), so
the answers show the pipeline working, not language quality.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["把下面的句子翻译成英文：我喜欢喝茶。", "中国的首都是哪里？", "改正句子中的错别字：我门今天去公园。"]


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on the embedded tiny default")
    p.add_argument("--workdir", default=".demo", help="where the demo keeps its outputs (default .demo)")
    p.add_argument("--only-model", action="store_true", help="only build the tiny base model")
    p.add_argument("--steps", type=int, default=120, help="LoRA training steps (default 120)")
    p.set_defaults(func=run)


def _stage(n: int, total: int, what: str) -> float:
    print(f"\n[{n}/{total}] {what}", flush=True)
    return time.time()


def build_base(work: Path) -> Path:
    from zhlora.models.tiny import make_tiny_model

    out = work / "tiny-llama"
    if (out / "config.json").is_file():
        print(f"  reusing {out}")
        return out
    texts = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "examples" / "data").glob("*"))]
    make_tiny_model(out, "llama", texts=texts + PROMPTS, hidden=96, layers=3, heads=4, kv_heads=2, seed=0)
    print(f"  wrote {out} (LLaMA, hidden 96, 3 layers, character tokenizer)")
    return out


def train_adapter(work: Path, base: Path, steps: int) -> Path:
    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    out = work / "runs" / "instruct-lora"
    if (out / "adapter_model.safetensors").is_file():
        print(f"  reusing {out}")
        return out
    cfg = load_config(str(ROOT / "examples" / "tiny_llama_lora.yaml"),
                      [f"model={base}", f"output_dir={out}", f"max_steps={steps}", "learning_rate=1e-2",
                       "save_steps=0", "logging_steps=10",
                       f"data={ROOT / 'examples' / 'data' / 'zh_instruct_sample.jsonl'}"])
    train(cfg)
    return out


def merge_adapter(work: Path, base: Path, adapter: Path) -> Path:
    from zhlora.cli import main

    out = work / "merged"
    if not (out / "config.json").is_file():
        if main(["merge", "--base", str(base), "--adapter", str(adapter), "--output", str(out)]) != 0:
            raise SystemExit("merge failed")
    else:
        print(f"  reusing {out}")
    if main(["verify", "--base", str(base), "--adapter", str(adapter), "--merged", str(out)]) != 0:
        raise SystemExit("verify failed: merged model differs from base + adapter")
    return out


def answers(base: Path, adapter: Path, merged: Path) -> dict[str, list[str]]:
    from zhlora.data import Conversation, Message
    from zhlora.infer.engine import Engine, GenerationOptions

    convs = [Conversation([Message("user", p)]) for p in PROMPTS]
    opts = GenerationOptions(max_new_tokens=24, temperature=0.0)
    eng = Engine.load(base, adapters={"instruct": str(adapter)}, template="alpaca")
    out = {"base": eng.generate(convs, adapter=None, options=opts),
           "base+adapter": eng.generate(convs, adapter="instruct", options=opts)}
    out["merged"] = Engine.load(merged, template="alpaca").generate(convs, options=opts)
    return out


def run(args) -> int:
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    total = 1 if args.only_model else 4
    _stage(1, total, "tiny Chinese base model")
    base = build_base(work)
    if args.only_model:
        return 0
    _stage(2, total, f"LoRA fine-tuning on examples/data/zh_instruct_sample.jsonl ({args.steps} steps)")
    adapter = train_adapter(work, base, args.steps)
    _stage(3, total, "streaming merge + verify")
    merged = merge_adapter(work, base, adapter)
    _stage(4, total, "generation: base vs adapter vs merged (greedy)")
    outs = answers(base, adapter, merged)
    meta = json.loads((adapter / "zhlora_adapter.json").read_text(encoding="utf-8"))
    log = [json.loads(x) for x in (adapter / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    print("\n| prompt | base | base+adapter | merged |\n|---|---|---|---|")
    for i, p in enumerate(PROMPTS):
        print(f"| {p} | {outs['base'][i]!r} | {outs['base+adapter'][i]!r} | {outs['merged'][i]!r} |")
    same = outs["base+adapter"] == outs["merged"]
    print(f"\ntraining loss {losses[0]:.3f} -> {losses[-1]:.3f}; eval loss "
          f"{meta['metrics'].get('eval_loss', float('nan')):.3f}; adapter and merged answers identical: {same}")
    print(f"outputs: base {base}\n         adapter {adapter} (loss curve: {adapter / 'loss.png'})\n"
          f"         merged {merged}\ndemo finished in {time.time() - t0:.0f} s")
    return 0 if same else 1
