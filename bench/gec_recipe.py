"""GEC adapter recipes on a dev set: how the demo's training-error density was chosen.

    .venv/bin/python bench/gec_recipe.py --workdir .demo --error-rate 0.25 --keep-ratio 0.05 --max-edits 10

Needs a demo workdir (`make demo` builds `.demo`) for its corpus split and GEC training
sentences. The dev set: `--dev-pairs` synthetic pairs (`gec synth`, the demo's mix, at the
test set's density: error rate 0.03, keep ratio 0.4, seed 11) made from *training* sentences
that are not among the GEC training sentences, so no test set is used for a choice. One run:
synthesize `--pairs` training pairs from the demo's GEC training sentences with the given
density, train the demo's LoRA recipe (`zhlora.embedded.demo.train_lora`) for `--steps`, and score the
greedy confusion decoder (the adapter's own judgement) at each of `--margins`: ChERRANT
F0.5 and pycorrector's sentence-level F1. Results go to `--out` (one folder per recipe) and
are printed as table rows. The numbers in docs/demo.md came from this procedure with 600 steps
on one thread (that study's dev sentences were drawn differently, so expect small differences).
`--use-dora` trains the same recipe as DoRA (PEFT's weight-decomposed LoRA); its run folder ends
in `-dora`. Run the two side by side, one thread each, for a fair training-time ratio; create the
shared dev set first (the first run writes it), e.g. start the LoRA run a minute before the DoRA run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=".demo", help="a demo workdir (corpus/, data/gec_train_clean.txt)")
    ap.add_argument("--out", default="bench_gec_recipe", help="folder for the runs (default bench_gec_recipe)")
    ap.add_argument("--error-rate", default="0.25")
    ap.add_argument("--keep-ratio", default="0.05")
    ap.add_argument("--max-edits", default="10")
    ap.add_argument("--substitute", default="uniform", choices=("uniform", "frequent"))
    ap.add_argument("--pairs", type=int, default=6000, help="training pairs (default 6000, as the demo)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--margins", default="2,3,4,5", help="greedy decoder margins to score")
    ap.add_argument("--dev-pairs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--use-dora", action="store_true",
                    help="train DoRA (recipe key use_dora=true) instead of plain LoRA, all else the demo's")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from zhlora.cli import main as zhlora
    from zhlora.embedded.corpus import pick_sentences
    from zhlora.embedded.demo import SYNTH_MIX, train_lora
    from zhlora.gec.evaluate import EvalConfig, run_eval
    from zhlora.models.embedded import EMBEDDED_BASE_DIR

    work, out = Path(a.workdir), Path(a.out)
    gec_clean = work / "data" / "gec_train_clean.txt"
    if not gec_clean.is_file() or not (work / "corpus" / "train.txt").is_file():
        raise SystemExit(f"{work}: not a demo workdir (needs corpus/train.txt and data/gec_train_clean.txt); "
                         "run `make demo` first or give --workdir")
    out.mkdir(parents=True, exist_ok=True)

    dev = out / f"dev{a.dev_pairs}.para"
    if not dev.exists():
        taken = set(gec_clean.read_text(encoding="utf-8").splitlines())
        pool = [s for s in pick_sentences(work / "corpus" / "train.txt", 10 * a.dev_pairs + len(taken), 11)
                if s not in taken][:a.dev_pairs]
        clean = out / f"dev{a.dev_pairs}_clean.txt"
        clean.write_text("".join(s + "\n" for s in pool), encoding="utf-8")
        if zhlora(["gec", "synth", "--input", str(clean), "--output", str(dev), "--format", "para", "--seed", "11",
                   "--mix", SYNTH_MIX, "--keep-ratio", "0.4", "--overwrite"]) != 0:
            raise SystemExit("gec synth failed for the dev set")

    tag = f"e{a.error_rate}-k{a.keep_ratio}-m{a.max_edits}-{a.substitute}-n{a.pairs}-s{a.steps}"
    tag += "-dora" if a.use_dora else ""
    run = out / tag
    run.mkdir(exist_ok=True)
    train_clean = run / "train_clean.txt"
    train_clean.write_text("".join(gec_clean.read_text(encoding="utf-8").splitlines(keepends=True)[:a.pairs]),
                           encoding="utf-8")
    data = run / "train.jsonl"
    if not data.exists() and zhlora(["gec", "synth", "--input", str(train_clean), "--output", str(data),
                                     "--seed", "1", "--mix", SYNTH_MIX, "--error-rate", a.error_rate,
                                     "--keep-ratio", a.keep_ratio, "--max-edits", a.max_edits,
                                     "--substitute", a.substitute]) != 0:
        raise SystemExit("gec synth failed for the training pairs")
    t0 = time.time()
    adapter = train_lora(EMBEDDED_BASE_DIR, data, run / "lora", a.steps, extra=("use_dora=true",) if a.use_dora else ())
    rows = {"train_seconds": round(time.time() - t0, 1)}
    for m in [float(x) for x in a.margins.split(",") if x.strip()]:
        ev = run / f"dev-confusion-m{m:g}"
        if not (ev / "metrics.json").exists():
            run_eval(EvalConfig(data=str(dev), format="para", output=str(ev), model=str(EMBEDDED_BASE_DIR),
                                adapter=str(adapter), batch_size=16, decoding="confusion", margin=m, overwrite=True))
        mt = json.loads((ev / "metrics.json").read_text(encoding="utf-8"))
        rows[f"m{m:g}"] = {"f05": mt["cherrant"]["f05"], "sentence_f1": round(float(mt["sighan"]["f1"]), 4)}
    (run / "results.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    best_f05 = max((v["f05"], k) for k, v in rows.items() if k.startswith("m"))
    best_f1 = max((v["sentence_f1"], k) for k, v in rows.items() if k.startswith("m"))
    print(f"| {tag} | {best_f05[0]:.3f} ({best_f05[1][1:]}) | {best_f1[0]:.3f} ({best_f1[1][1:]}) |")


if __name__ == "__main__":
    main()
