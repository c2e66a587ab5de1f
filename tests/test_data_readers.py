"""Every supported format, as a JSON list and as JSONL, parsed into the right conversations."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from zhlora.conversation import Conversation, Message
from zhlora.data.readers import classify, read_conversations, read_file

ROOT = Path(__file__).resolve().parents[1]


def pairs(conv: Conversation) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in conv.messages]


def write(path: Path, records: list, as_json: bool) -> Path:
    if as_json:  # pretty-printed: each record starts on its own line, spans several
        path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                        encoding="utf-8")
    return path


# (format, records, expected [(system, [(role, content)...])])
CASES = {
    "alpaca": (
        [{"instruction": "把下面的句子翻译成英文。", "input": "我爱你", "output": "I love you."},
         {"instruction": "写一句问候语。", "input": "", "output": "你好！"},
         {"instruction": "继续", "input": "  ", "output": "好的", "system": "你是助手",
          "history": [["你好", "你好呀"], ["你是谁", "我是助手"]]}],
        [("", [("user", "把下面的句子翻译成英文。\n我爱你"), ("assistant", "I love you.")]),
         ("", [("user", "写一句问候语。"), ("assistant", "你好！")]),
         ("你是助手", [("user", "你好"), ("assistant", "你好呀"), ("user", "你是谁"),
                       ("assistant", "我是助手"), ("user", "继续"), ("assistant", "好的")])]),
    "sharegpt": (
        [{"id": "a", "conversations": [{"from": "human", "value": "一"}, {"from": "gpt", "value": "二"},
                                       {"from": "human", "value": "三"}, {"from": "gpt", "value": "四"}]},
         {"conversations": [{"from": "system", "value": "简洁"}, {"from": "user", "value": "问"},
                            {"from": "assistant", "value": "答"}]}],
        [("", [("user", "一"), ("assistant", "二"), ("user", "三"), ("assistant", "四")]),
         ("简洁", [("user", "问"), ("assistant", "答")])]),
    "firefly": (
        [{"kind": "Translation", "input": "翻译：早上好", "target": "Good morning"},
         {"conversation_id": 7, "category": "Brainstorming",
          "conversation": [{"human": "推荐一本书", "assistant": "《活着》"},
                           {"human": "为什么", "assistant": "故事感人"}]}],
        [("", [("user", "翻译：早上好"), ("assistant", "Good morning")]),
         ("", [("user", "推荐一本书"), ("assistant", "《活着》"), ("user", "为什么"),
               ("assistant", "故事感人")])]),
    "openai": (
        [{"messages": [{"role": "system", "content": "你是老师"}, {"role": "user", "content": "1+1=?"},
                       {"role": "assistant", "content": "等于2"}]},
         {"messages": [{"role": "user", "content": [{"type": "text", "text": "你"},
                                                    {"type": "text", "text": "好"}]},
                       {"role": "assistant", "content": "你好！"}]}],
        [("你是老师", [("user", "1+1=?"), ("assistant", "等于2")]),
         ("", [("user", "你好"), ("assistant", "你好！")])]),
    "zhlora": (
        [{"system": "系统", "messages": [{"role": "user", "content": "问"},
                                         {"role": "assistant", "content": "答"}], "meta": {"src": "x"}},
         {"system": "", "messages": [{"role": "user", "content": "甲"}, {"role": "assistant", "content": "乙"}]}],
        [("系统", [("user", "问"), ("assistant", "答")]),
         ("", [("user", "甲"), ("assistant", "乙")])]),
}


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "jsonl"])
@pytest.mark.parametrize("fmt", sorted(CASES))
def test_data_format_parsed(tmp_path, fmt, as_json):
    records, expected = CASES[fmt]
    path = write(tmp_path / ("d.json" if as_json else "d.jsonl"), records, as_json)
    for given in ("auto", fmt):
        res = read_conversations(path, format=given)
        assert res.formats == {str(path): fmt}
        assert res.problems == [] and res.skipped == 0 and res.records == len(records)
        got = [(c.system, pairs(c)) for c in res.conversations]
        assert got == expected


@pytest.mark.parametrize("alias,fmt", [("belle", "alpaca"), ("guanaco", "alpaca"),
                                       ("alpaca-zh", "alpaca"), ("belle-multiturn", "sharegpt")])
def test_data_format_aliases(tmp_path, alias, fmt):
    path = write(tmp_path / "d.jsonl", CASES[fmt][0], False)
    assert read_file(path, alias).format == fmt
    assert len(read_file(path, alias).conversations) == len(CASES[fmt][0])


def test_data_origin_lines_json_list(tmp_path):
    records, _ = CASES["sharegpt"]
    path = write(tmp_path / "d.json", records, True)
    text = path.read_text(encoding="utf-8").splitlines()
    res = read_conversations(path)
    lines = [int(c.origin.rsplit(":", 1)[1]) for c in res.conversations]
    # each origin line is where the record's "{" is
    assert [text[n - 1].strip() for n in lines] == ["{", "{"]
    assert lines[0] == 2 and lines[1] > lines[0] + 10


def test_data_origin_lines_jsonl_skip_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    rec = json.dumps(CASES["alpaca"][0][1], ensure_ascii=False)
    path.write_text(f"\n{rec}\n\n\n{rec}\n", encoding="utf-8")
    res = read_conversations(path)
    assert [c.origin for c in res.conversations] == [f"{path}:2", f"{path}:5"]


def test_data_bom_is_ignored(tmp_path):
    for name, as_json in (("d.json", True), ("d.jsonl", False)):
        path = write(tmp_path / name, CASES["alpaca"][0], as_json)
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        assert len(read_conversations(path).conversations) == 3


@pytest.mark.parametrize("rec,fmt", [
    ({"instruction": "a", "input": "", "output": "b"}, "alpaca"),
    ({"instruction": "a", "output": "b", "history": []}, "alpaca"),
    ({"conversations": []}, "sharegpt"),
    ({"conversation": []}, "firefly"),
    ({"kind": "x", "input": "a", "target": "b"}, "firefly"),
    ({"messages": []}, "openai"),
    ({"system": "", "messages": []}, "zhlora"),
    ({"question": "a", "answer": "b"}, None),
    ([1, 2], None),
])
def test_data_classify_record(rec, fmt):
    assert classify(rec) == fmt


def test_data_auto_detect_majority_over_first_records(tmp_path):
    # first record is not alpaca-looking (missing output), the rest are: alpaca wins,
    # and the odd record is reported against the alpaca keys
    recs = [{"instruction": "x"}] + [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(3)]
    path = write(tmp_path / "d.jsonl", recs, False)
    fr = read_file(path)
    assert (fr.format, fr.detected, len(fr.conversations), fr.skipped) == ("alpaca", True, 3, 1)
    assert fr.problems == [f"{path}:1: missing key 'output' (alpaca records have instruction, "
                           "output (+ input, system, history))"]


def test_data_mixed_formats_across_files(tmp_path):
    a = write(tmp_path / "a.jsonl", CASES["alpaca"][0], False)
    b = write(tmp_path / "b.json", CASES["sharegpt"][0], True)
    res = read_conversations([a, b])
    assert res.formats == {str(a): "alpaca", str(b): "sharegpt"}
    assert len(res.conversations) == 5 and res.records == 5
    assert "read 5 conversation(s) from 2 file(s)" in res.summary()


def test_data_bundled_samples():
    d = ROOT / "examples" / "data"
    instruct = read_conversations(d / "zh_instruct_sample.jsonl")
    chat = read_conversations(d / "zh_chat_sample.json")
    assert len(instruct.conversations) == 80
    assert all(len(c.messages) == 2 for c in instruct.conversations)
    lengths = [len(c.messages[1].content) for c in instruct.conversations]
    assert max(lengths) <= 60
    assert len(chat.conversations) == 12
    assert all(len(c.messages) >= 4 for c in chat.conversations)
    assert chat.formats[str(d / "zh_chat_sample.json")] == "sharegpt"
    assert chat.conversations[0].system == "你是一个耐心、简洁的中文助手。"
    assert chat.conversations[0].messages[0] == Message("user", "帮我想一个周末的活动。")


def test_data_docs_examples_parse(tmp_path):
    """Every JSON example record in docs/data.md reads without problems, in the format named
    in the paragraph above it."""
    import re

    doc = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    blocks = re.findall(r"\*\*(\w+)\*\* —.*?```json\n(.*?)```", doc, flags=re.S)
    assert [name for name, _ in blocks] == ["alpaca", "sharegpt", "firefly", "openai", "zhlora"]
    for name, body in blocks:
        path = tmp_path / f"{name}.jsonl"
        path.write_text(body, encoding="utf-8")
        res = read_conversations(path)
        assert res.formats[str(path)] == name and res.records == len(body.strip().splitlines())
