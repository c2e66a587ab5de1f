"""`gec eval`: answer cleaning on realistic model outputs, and the whole pipeline on a tiny
random LLaMA (garbage corrections, but every file written and the numbers reproducible)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from zhlora.cli import main as zmain
from zhlora.gec.evaluate import clean_output, clean_with_reason, is_spelling_set, sighan_files
from zhlora.gec.formats import load

DATA = Path(__file__).parent / "assets" / "gec_data"
SRC = "我们去公圆散步。"
FIX = "我们去公园散步。"


@pytest.mark.parametrize("raw", [
    FIX,
    f"修改后：{FIX}",
    f"改正后的句子：{FIX}",
    f"修改后的句子：\n{FIX}",
    f"修改后的句子如下：\n\n{FIX}\n",
    f"“{FIX}”",
    f"正确的句子是：“{FIX}”",
    f"{FIX}\n\n解释：原句中“公圆”应为“公园”。",
    f"{FIX}\n修改说明：把“公圆”改成了“公园”。",
    f"<|im_start|>assistant\n{FIX}<|im_end|>",
    f"{FIX}</s>",
    f"<|assistant|>\n{FIX}",
    f"[gMASK]<sop>{FIX}<eop>",
    f"好的，以下是修改后的句子：{FIX}",
    f"输出：{FIX}",
    f"```\n{FIX}\n```",
    f"{FIX}（将“公圆”改为“公园”）",
    f"**修改后：** {FIX}",
    f"Corrected: {FIX}",
    f"答案：{FIX}",
    f"纠正后的句子为：{FIX}",
    f"  {FIX}  ",
    f"assistant\n{FIX}",
])
def test_clean_output_finds_the_sentence(raw):
    assert clean_output(raw, SRC) == FIX


@pytest.mark.parametrize("raw, reason", [
    ("", "empty"), (" \n ", "empty"), ("<|im_end|>", "empty"), ("修改后：", "empty"),
    (FIX * 4, "too_long"), ("原句没有错误。", "no_error"), ("这句话没有语法错误。", "no_error"),
    ("无需修改。", "no_error"), ("句子本身没有问题。", "no_error"),
])
def test_clean_output_falls_back_to_the_source(raw, reason):
    assert clean_with_reason(raw, SRC) == (SRC, reason)


@pytest.mark.parametrize("src", ["正确的做法是：先洗手。", "“你好”，他说。", "他说：“你好。”",
                                 "结果：他赢了。", "答案是三。", "他没有错误地理解这句话。",
                                 "这是修改（第二版）后的文件。"])
def test_clean_output_keeps_sentences_that_look_like_labels(src):
    assert clean_output(src, src) == src


def test_length_limit_is_two_sources_plus_ten():
    src = "好" * 5
    assert clean_output("坏" * 20, src) == "坏" * 20          # 20 <= 2*5+10
    assert clean_with_reason("坏" * 21, src) == (src, "too_long")


def test_spelling_set_detection():
    assert is_spelling_set(*load(DATA / "eval5.tsv"))
    assert is_spelling_set(load(DATA / "eval5.tsv")[0], "para")      # every pair keeps its length
    assert not is_spelling_set(*load(DATA / "mucgec.para"))


@pytest.fixture(scope="module")
def eval_run(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("gec") / "eval"
    rc = zmain(["gec", "eval", "--model", str(tiny_llama), "--data", str(DATA / "eval5.tsv"),
                "--output", str(out), "--max-new-tokens", "16", "--batch-size", "2"])
    assert rc == 0
    return out


def test_eval_writes_every_file(eval_run):
    names = {p.name for p in eval_run.iterdir()}
    assert names == {"predictions.para", "predictions.jsonl", "ref.para", "hyp.m2", "ref.m2",
                     "report.md", "metrics.json"}
    recs = [json.loads(x) for x in (eval_run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["source"] for r in recs] == [e.source for e in load(DATA / "eval5.tsv")[0]]
    assert all(r["prediction"] == clean_output(r["raw"], r["source"]) for r in recs)
    para = (eval_run / "predictions.para").read_text(encoding="utf-8").splitlines()
    assert [ln.split("\t")[2] for ln in para] == [r["prediction"] for r in recs]
    report = (eval_run / "report.md").read_text(encoding="utf-8")
    assert "| TP | FP | FN | P | R | F0.5 |" in report and "## SIGHAN" in report
    assert not list(eval_run.parent.glob(".eval.tmp-*"))


def test_eval_numbers_equal_scoring_the_written_files(eval_run, tmp_path, capsys):
    from zhlora.gec.scoring import score_para

    metrics = json.loads((eval_run / "metrics.json").read_text(encoding="utf-8"))
    again = score_para(eval_run / "predictions.para", eval_run / "ref.para", m2_out=tmp_path / "h.m2")
    c = metrics["cherrant"]
    assert (c["tp"], c["fp"], c["fn"], c["p"], c["r"], c["f05"]) == (again.tp, again.fp, again.fn,
                                                                    again.p, again.r, again.f)
    assert c["tp"] + c["fp"] + c["fn"] > 0  # a random model edits something
    assert (tmp_path / "h.m2").read_text(encoding="utf-8") == (eval_run / "hyp.m2").read_text(encoding="utf-8")
    s = sighan_files(eval_run / "predictions.para", DATA / "eval5.tsv").data
    assert {k: s[k] for k in ("tp", "fp", "fn", "tn", "acc", "f1")} == \
           {k: metrics["sighan"][k] for k in ("tp", "fp", "fn", "tn", "acc", "f1")}
    assert s["total"] == 5 and s["tp"] + s["fn"] == 3  # 3 of the 5 pairs have an error


def test_eval_refuses_overwrite_and_test_sets_without_answers(eval_run, tiny_llama, tmp_path, capsys):
    args = ["gec", "eval", "--model", str(tiny_llama), "--max-new-tokens", "4"]
    assert zmain(args + ["--data", str(DATA / "eval5.tsv"), "--output", str(eval_run)]) == 2
    assert "already exists" in capsys.readouterr().err
    test_set = tmp_path / "test.json"
    test_set.write_text('{"t1": {"sentence": "我们去公园。"}}', encoding="utf-8")
    assert zmain(args + ["--data", str(test_set), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no gold correction" in err and "Traceback" not in err
    assert zmain(["gec", "eval", "--data", str(test_set)]) == 2
    assert "needs --model, --adapter or both" in capsys.readouterr().err


def test_eval_with_an_adapter_uses_it(tiny_llama, eval_run, tmp_path):
    """`--adapter` alone: the base comes from the adapter's metadata and the LoRA is active."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from zhlora.runinfo import write_adapter_meta

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    cfg = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapter = tmp_path / "adapter"
    get_peft_model(base, cfg).save_pretrained(adapter)
    write_adapter_meta(adapter, {"base_model": str(tiny_llama), "family": "llama", "template": "alpaca"})
    out = tmp_path / "eval"
    assert zmain(["gec", "eval", "--adapter", str(adapter), "--data", str(DATA / "eval5.tsv"),
                  "--output", str(out), "--max-new-tokens", "16", "--batch-size", "2"]) == 0
    raw = lambda d: [json.loads(x)["raw"] for x in (d / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]  # noqa: E731
    assert raw(out) != raw(eval_run)
    assert f"adapter: `{adapter}`" in (out / "report.md").read_text(encoding="utf-8")
