"""One-shot GPU check: training, merge and decoding at real 6-7B shapes, random weights.

    python bench/gpu_check.py [--workdir /tmp/zhlora_gpu_check] [--steps 8]
    python bench/gpu_check.py --cpu-smoke      # the same code path on CPU at tiny shapes

Written to run once, blind, on a machine with one large GPU (budget: 8 minutes on an H200),
torch/transformers/peft/accelerate installed, nothing downloaded: the models are built with
random weights from the published configs in examples/configs/ (Qwen2.5-7B-Instruct and
ChatGLM3-6B shapes) and written to --workdir (about 28 GB of disk).

Prints one table:
- training: bf16 LoRA and 4-bit QLoRA (`quantization=4bit`, needs bitsandbytes; a wheel can
  travel with the script) through `zhlora.train.sft.train`, packing, cutoff 1024: label
  tokens/s over the steps after the first two, peak GPU memory (torch.cuda.max_memory_allocated)
  beside the `--plan` estimate for the same recipe;
- the streaming merge (`zhlora.merge.merge_adapters`) of the 7B model and its LoRA adapter, in
  its own process: wall time and peak RAM (VmHWM);
- greedy decoding tokens/s (batch 1, 128 new tokens) of the base, the merged model and the base
  with the unmerged adapter (PEFT).
Every section catches its own failure, prints it and goes on; a section that would start after
--budget seconds is skipped.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"
SHAPES = {"qwen2.5-7b": ("qwen2.5-7b-instruct", "qwen2"), "chatglm3-6b": ("chatglm3-6b", "chatglm3")}
SMOKE_DIMS = {"qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2),
              "chatglm3": dict(hidden_size=64, ffn_hidden_size=128, num_layers=2, num_attention_heads=4,
                               kv_channels=16, multi_query_group_num=2)}
CHARS = "".join(chr(0x4E00 + i) for i in range(3000))
ROWS: list[list[str]] = []
STARTED = time.time()


def section(name: str, budget: float):
    """Decorator: run the function, print and swallow its failure, skip it past the budget."""
    def wrap(fn):
        def run(*a, **k):
            if time.time() - STARTED > budget:
                ROWS.append([name, "skipped: over the time budget", "", "", ""])
                return None
            try:
                return fn(*a, **k)
            except Exception as e:  # noqa: BLE001  (a blind run must go on)
                print(f"[{name}] FAILED: {type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}", flush=True)
                ROWS.append([name, f"FAILED: {type(e).__name__}: {str(e)[:120]}", "", "", ""])
                return None
        return run
    return wrap


def model_config(name: str, family: str, smoke: bool, vocab: int | None) -> dict:
    cfg = json.loads((CONFIGS / SHAPES[name][0] / "config.json").read_text(encoding="utf-8"))
    if smoke:
        cfg.update(SMOKE_DIMS[family])
        key = "padded_vocab_size" if family == "chatglm3" else "vocab_size"
        cfg[key] = max(vocab or 0, 512)
    return cfg


def build_model_dir(name: str, family: str, work: Path, smoke: bool) -> Path:
    """Tokenizer + config.json + random weights (bf16 on GPU, fp32 on CPU) in a folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import zhlora  # noqa: F401  (native ChatGLM)
    out = work / name
    if (out / "model.safetensors.index.json").is_file() or (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    if family == "qwen2":
        from zhlora.models.tiny import build_char_tokenizer

        tok = build_char_tokenizer([CHARS], "qwen2")
        tok.save_pretrained(out)
        vocab, ids = len(tok), {"bos_token_id": tok.eos_token_id, "eos_token_id": tok.eos_token_id,
                                "pad_token_id": tok.pad_token_id}
    else:
        from zhlora.models.chatglm.tiny import write_tokenizer

        write_tokenizer(out, "chatglm3")
        vocab, ids = None, {}
    fields = {**model_config(name, family, smoke, vocab), **ids}  # our tokenizer's special ids
    (out / "config.json").write_text(json.dumps(fields), encoding="utf-8")
    config = AutoConfig.from_pretrained(str(out), local_files_only=True)
    dev, dtype = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(str(out), max_shard_size="4GB")
    del model
    _free()
    return out


def write_data(work: Path, n: int, chars_per_sample: int) -> Path:
    rng = random.Random(0)
    path = work / "data.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            text = "".join(rng.choice(CHARS[:2000]) for _ in range(chars_per_sample))
            f.write(json.dumps({"instruction": "改正句子", "input": text[: chars_per_sample // 2],
                                "output": text[chars_per_sample // 2:]}, ensure_ascii=False) + "\n")
    return path


def recipe(model_dir: Path, data: Path, out: Path, args, extra=()) -> list[str]:
    return [f"model={model_dir}", f"data={data}", f"output_dir={out}", "overwrite=true", "packing=true",
            f"cutoff_len={args.cutoff}", f"batch_size={args.batch}", f"max_steps={args.steps}",
            "lora_target=all", "lora_r=16", "lora_dropout=0", "save_steps=0", "eval_ratio=0",
            "report_to=none", "logging_steps=1", "warmup_ratio=0", *extra]


class StepTimer:
    """A TrainerCallback (duck-typed) recording each optimizer step's wall time."""

    def __init__(self):
        self.times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, *a, **k):
        _sync()
        self._t = time.perf_counter()

    def on_step_end(self, *a, **k):
        _sync()
        self.times.append(time.perf_counter() - self._t)

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def train_row(label: str, overrides: list[str]) -> Path | None:
    """Train through zhlora; append (label, tokens/s, peak, plan estimate) to the table."""
    from zhlora.train.config import load_config
    from zhlora.train.plan import GiB, build_plan
    from zhlora.train.sft import train

    cfg = load_config(None, overrides)
    quantized = any(o.startswith("quantization=") for o in overrides)
    est = build_plan(cfg)[1][1 if quantized else 0].total
    timer = StepTimer()
    _free()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    res = train(cfg, callbacks=[timer])
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else float("nan")
    meta = json.loads((res.output / "zhlora_adapter.json").read_text(encoding="utf-8"))["data_summary"]
    label_per_row = meta["label_tokens"] / max(meta["rows"], 1)
    timed = timer.times[2:] or timer.times
    rate = label_per_row * cfg.batch_size * len(timed) / sum(timed)
    measured = f"{peak / GiB:.2f} GiB" if not math.isnan(peak) else "n/a (CPU)"
    ROWS.append([label, f"{rate:,.0f} label tok/s", measured, f"{est / GiB:.2f} GiB",
                 f"{peak / est:.2f}" if est and not math.isnan(peak) else ""])
    del res
    _free()
    return Path(cfg.output_dir)


MERGE_CHILD = """
import json, sys, time
from pathlib import Path
from zhlora.merge.merge import merge_adapters
t = time.perf_counter()
merge_adapters(sys.argv[1], [sys.argv[2]], sys.argv[3], overwrite=True)
dt = time.perf_counter() - t
hwm = next(int(l.split()[1]) for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM'))
print('RESULT ' + json.dumps({'seconds': dt, 'peak_kib': hwm}))
"""


def merge_row(base: Path, adapter: Path, out: Path) -> Path:
    res = subprocess.run([sys.executable, "-c", MERGE_CHILD, str(base), str(adapter), str(out)],
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr[-1500:])
    r = json.loads(next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))[7:])
    size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    ROWS.append(["streaming merge, 7B + adapter", f"{r['seconds']:.1f} s ({size / r['seconds'] / 1e9:.2f} GB/s)",
                 f"peak RAM {r['peak_kib'] / 1024 ** 2:.2f} GiB", f"base {size / 1024 ** 3:.1f} GiB", ""])
    return out


def decode_rate(model, new_tokens: int) -> float:
    ids = torch.randint(100, 1000, (1, 32), device=model.device)
    model.generate(ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)  # warm-up
    _sync()
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    _sync()
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t)


def decode_one(label: str, folder: Path | None, adapter: Path | None, new_tokens: int, with_adapter: bool) -> None:
    from peft import PeftModel

    from zhlora.models.loading import load_model

    if folder is None or (with_adapter and adapter is None):
        raise RuntimeError("its input was not built (see the failures above)")
    model = load_model(folder, device="cuda" if torch.cuda.is_available() else "cpu")
    if with_adapter:
        model = PeftModel.from_pretrained(model, str(adapter))
    rate = decode_rate(model.eval(), new_tokens)
    ROWS.append([f"greedy decode: {label}", f"{rate:.1f} tok/s", "", "", ""])
    del model


def decode_rows(base: Path, adapter: Path | None, merged: Path | None, new_tokens: int, budget: float) -> None:
    for label, folder, with_adapter in (("base", base, False), ("merged", merged, False),
                                        ("base + unmerged adapter", base, True)):
        section(f"greedy decode: {label}", budget)(decode_one)(label, folder, adapter, new_tokens, with_adapter)
        _free()


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _free():
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def print_table() -> None:
    head = ["check", "speed / time", "peak (measured)", "plan estimate / size", "measured / plan"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in ROWS:
        print("| " + " | ".join(r) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/zhlora_gpu_check")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU: checks the script, measures nothing")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--budget", type=float, default=420, help="seconds after which no new section starts")
    args = ap.parse_args()
    smoke = args.cpu_smoke
    args.cutoff, args.batch, new_tokens = (128, 2, 16) if smoke else (1024, 4, 128)
    args.steps = 3 if smoke else args.steps
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"zhlora GPU check: torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU (CPU)'}"
          f"{', CPU SMOKE (tiny shapes)' if smoke else ''}", flush=True)
    data = write_data(work, n=64 if smoke else 400, chars_per_sample=60 if smoke else 600)
    adapters: dict[str, Path | None] = {}
    dirs: dict[str, Path | None] = {}
    for name, (_, family) in SHAPES.items():
        dirs[name] = section(f"build {name}", args.budget)(build_model_dir)(name, family, work, smoke)
        if dirs[name] is None:
            continue
        for quant in (False, True):
            label = f"train {name} {'QLoRA 4-bit' if quant else 'LoRA ' + ('bf16' if not smoke else 'fp32')}"
            extra = ["quantization=4bit"] if quant else []
            out = section(label, args.budget)(train_row)(
                label, recipe(dirs[name], data, work / f"{name}-{'qlora' if quant else 'lora'}", args, extra))
            if not quant:
                adapters[name] = out
    base, adapter = dirs.get("qwen2.5-7b"), adapters.get("qwen2.5-7b")
    merged = None
    if base and adapter:
        merged = section("streaming merge", args.budget)(merge_row)(base, adapter, work / "qwen-merged")
    if base:
        decode_rows(base, adapter, merged, new_tokens, args.budget)
    print_table()
    print(f"\ntotal {time.time() - STARTED:.0f} s")


if __name__ == "__main__":
    main()
