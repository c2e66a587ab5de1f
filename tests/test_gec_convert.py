"""Loaders for the public CGEC formats, `zhlora gec convert`, and their bad-input messages."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from zhlora.cli import main as zmain
from zhlora.errors import DataError, ZhloraError
from zhlora.gec.formats import (Example, apply_fcgec_operations, detect_format, load,
                                resolved_targets)
from zhlora.gec.prompt import GEC_INSTRUCTION, gec_conversation, gec_record

DATA = Path(__file__).parent / "assets" / "gec_data"


@pytest.mark.parametrize("name, fmt", [
    ("nlpcc18_gold.m2", "m2"), ("nlpcc18_train.txt", "nlpcc18"), ("mucgec.para", "para"),
    ("fcgec.json", "fcgec"), ("cged.xml", "cged"), ("sighan.tsv", "sighan"),
    ("pairs.jsonl", "jsonl")])
def test_detect_format(name, fmt):
    assert detect_format(DATA / name) == fmt


def test_nlpcc18_m2_rebuilds_each_annotator():
    ex, fmt = load(DATA / "nlpcc18_gold.m2", "nlpcc18")
    assert fmt == "nlpcc18"
    assert ex[0] == Example("1", "我昨天去了图书管借书。", ["我昨天去了图书馆借书。", "我昨天到了图书馆借书。"])
    assert ex[1].targets == [ex[1].source] and ex[1].source == "他非常喜欢看NBA比赛。"
    assert ex[2].targets == ["这个问题很复杂。", "其实这个问题很复杂的。"]


def test_nlpcc18_word_level_keeps_space_between_latin_words(tmp_path):
    p = tmp_path / "g.m2"
    p.write_text("S 我 爱 machine learning 。\nA 1 2|||S|||喜欢|||REQUIRED|||-NONE-|||0\n", encoding="utf-8")
    assert load(p, "nlpcc18")[0] == [Example("1", "我爱machine learning。", ["我喜欢machine learning。"])]
    assert load(p, "m2")[0][0].source == "我爱machinelearning。"  # char-level M2 joins tokens


def test_nlpcc18_training_file():
    ex, _ = load(DATA / "nlpcc18_train.txt")
    assert [e.targets for e in ex] == [["我昨天去了图书馆借书。"], ["他非常喜欢看比赛。"],
                                       ["这个问题很复杂。", "这个问题很复杂的。"]]


def test_m2_matches_mucgec_para(shared_dir):
    """ChERRANT's M2 of MuCGEC dev rebuilds the para targets (up to ChERRANT's t2s)."""
    d = shared_dir / "cgec" / "mucgec_dev"
    m2, _ = load(d / "MuCGEC_dev.m2.char")
    para, fmt = load(d / "MuCGEC_dev.txt")
    assert fmt == "para" and len(m2) == len(para) == 1137
    nows = lambda t: re.sub(r"\s", "", t)  # noqa: E731
    same = sum(resolved_targets(a) == [nows(t) for t in resolved_targets(Example(b.id, nows(b.source), b.targets))]
               for a, b in zip(m2, para))
    assert same == 1133  # the other 4 differ only by ChERRANT's t2s (決定 -> 决定 ...)


def test_mucgec_special_targets():
    ex, _ = load(DATA / "mucgec.para", "mucgec")
    assert len(ex[0].targets) == 2
    assert resolved_targets(ex[1]) == ["我们去公园散步。"]
    assert resolved_targets(ex[2]) == []


def test_fcgec_operations():
    ex = {e.id: e for e in load(DATA / "fcgec.json")[0]}
    assert ex["a1"].targets == ["为了防止这类事故不发生，工厂加强了安全检查。"]
    assert ex["a2"].targets == ["这次活动，使我们增长了见识。", "通过这次活动，我们增长了见识。"]
    assert ex["a3"].targets == ["春天的公园是一个美丽的地方。", "春天的公园是一个美丽的季节。"]
    assert ex["a4"].targets == ["我们要继承和发扬优良传统。"]
    assert ex["a5"].targets == ["他的成绩提高了很多。"]
    assert ex["a6"].targets == ["今天的天气非常晴朗。"]


def test_fcgec_readme_examples():
    s = "ABCDE"
    assert apply_fcgec_operations(s, [{"Switch": [0, 2, 1, 3, 4]}]) == ["ACBDE"]
    assert apply_fcgec_operations(s, [{"Delete": [3]}]) == ["ABCE"]
    assert apply_fcgec_operations(s, [{"Insert": [{"pos": 1, "tag": "INS_1", "label": ["F"]}]}]) == ["ABFCDE"]
    assert apply_fcgec_operations(s, [{"Modify": [{"pos": 2, "tag": "MOD_1", "label": ["F"]}]}]) == ["ABFDE"]
    # MOD_1+INS_2: one character replaced by three; Switch first, then edits on the result
    assert apply_fcgec_operations(s, [{"Modify": [{"pos": 0, "tag": "MOD_1+INS_2", "label": "XYZ"}]}]) == ["XYZBCDE"]
    assert apply_fcgec_operations(s, [{"Switch": [1, 0, 2, 3, 4], "Delete": [0]}]) == ["ACDE"]


def test_cged_and_entities():
    ex, _ = load(DATA / "cged.xml")
    assert ex[0].id == "fixture_1" and ex[0].targets == ["我今天很高兴，因为我的朋友送了我一个礼物。"]
    assert ex[1].source == "他学习汉语已经两年了，说得很流力 & 自然。"


def test_sighan_and_jsonl():
    ex, _ = load(DATA / "sighan.tsv")
    assert [(e.id, e.targets[0]) for e in ex][0] == ("2", "我们去公园散步。") and len(ex) == 3
    js, _ = load(DATA / "pairs.jsonl")
    assert js[0] == Example("j1", "我门去公园。", ["我们去公园。"])
    assert js[2].targets == ["他很高兴。", "他很开心。"]


@pytest.mark.parametrize("fmt, text, expect", [
    ("para", "1\t好\t好\nonly-one-field\n", r"x\.txt:2: expected id<TAB>source"),
    ("sighan", "好\t好\n好\t好\t好\n", r"x\.txt:2: expected source<TAB>target, found 3"),
    ("nlpcc18", "1\tx\t好\n", r"x\.txt:1: expected sid<TAB>number of corrections"),
    ("nlpcc18", "1\t2\t好\t好\n", r"x\.txt:1: says 2 correction\(s\) but has 1"),
    ("m2", "S 我 好\nA 5 6|||S|||很|||REQUIRED|||-NONE-|||0\n", r"x\.txt:2: edit span 5 6 is outside"),
    ("m2", "S 我 好\nA zero|||S\n", r"x\.txt:2: bad edit line"),
    ("m2", "我 好\n", r"x\.txt:1: an M2 block must start with 'S <tokens>'"),
    ("fcgec", '{"k": {"sentence": "好的", "error_flag": 1, "operation": "[{\\"Switch\\": [0]}]"}}',
     r"record 'k': cannot apply its 'operation' \(Switch lists 1 positions"),
    ("fcgec", '{"k": \n{"sentence": 1}', r"x\.txt:2: malformed JSON"),
    ("cged", "<DOC><TEXT id='1'></TEXT></DOC>", r"x\.txt:1: <DOC> without a <TEXT"),
    ("jsonl", '{"source": "好"}\n{"foo": 1}\n', r"x\.txt:2: expected an object with a source"),
])
def test_bad_input_names_file_and_line(tmp_path, fmt, text, expect):
    p = tmp_path / "x.txt"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        load(p, fmt)
    assert re.search(expect, str(e.value)), str(e.value)


def test_not_utf8_and_empty(tmp_path):
    p = tmp_path / "x.txt"
    p.write_bytes("1\t好\t好\n".encode() + "2\t错\t对\n".encode("gbk"))
    with pytest.raises(DataError, match=r"x\.txt:2: not valid UTF-8.*iconv"):
        load(p, "para")
    p.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ZhloraError, match="no records found"):
        load(p, "para")


def test_prompt_matches_alpaca_reader(tmp_path):
    """Eval builds the same user turn the training reader builds from a synth record."""
    from zhlora.data.readers import read_file

    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(gec_record("我门去公园。", "我们去公园。"), ensure_ascii=False) + "\n",
                 encoding="utf-8")
    conv = read_file(p).conversations[0]
    assert conv.messages[0].content == gec_conversation("我门去公园。").messages[0].content
    assert conv.messages[0].content.startswith(GEC_INSTRUCTION)


def test_cli_convert_both_and_refusals(tmp_path, capsys):
    out = tmp_path / "fc.para"
    assert zmain(["gec", "convert", "--input", str(DATA / "fcgec.json"), "--output", str(out),
                  "--to", "both"]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[1] == "a2\t通过这次活动，使我们增长了见识。\t这次活动，使我们增长了见识。\t通过这次活动，我们增长了见识。"
    recs = [json.loads(x) for x in out.with_suffix(".jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(recs) == 6 and recs[0] == gec_record("为了防止这类事故不再发生，工厂加强了安全检查。",
                                                    "为了防止这类事故不发生，工厂加强了安全检查。")
    assert "5 with corrections, 1 already correct" in capsys.readouterr().out
    # an existing output is refused; a test set without answers is refused
    assert zmain(["gec", "convert", "--input", str(DATA / "fcgec.json"), "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    test_set = tmp_path / "test.json"
    test_set.write_text('{"t1": {"sentence": "我们去公园。"}}', encoding="utf-8")
    assert zmain(["gec", "convert", "--input", str(test_set), "--output", str(tmp_path / "t.para")]) == 2
    err = capsys.readouterr().err
    assert "no gold correction" in err and "Traceback" not in err


def test_cli_convert_mucgec_to_alpaca_drops_unannotatable(tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    assert zmain(["gec", "convert", "--input", str(DATA / "mucgec.para"), "--format", "mucgec",
                  "--output", str(out)]) == 0
    recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["output"] for r in recs] == ["即使冰箱里没什么东西也能做很好吃的菜。", "我们去公园散步。"]
    assert "1 left out" in capsys.readouterr().out


def test_cli_bad_file_prints_lines_without_traceback(tmp_path, capsys):
    p = tmp_path / "bad.tsv"
    p.write_text("好\t好\n坏\n", encoding="utf-8")
    assert zmain(["gec", "convert", "--input", str(p), "--format", "sighan",
                  "--output", str(tmp_path / "o.para")]) == 2
    err = capsys.readouterr().err
    assert f"{p}:2: expected source<TAB>target" in err and "Traceback" not in err
