"""Bad input never raises a traceback: each problem is reported as `file:line: reason`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zhlora.cli import main
from zhlora.data.readers import read_conversations, read_file
from zhlora.errors import DataError, ZhloraError

GOOD = {"instruction": "问", "input": "", "output": "答"}


def jsonl(path: Path, lines: list) -> Path:
    """Write lines (dicts are dumped, str/bytes written as they are)."""
    out = b""
    for x in lines:
        if isinstance(x, bytes):
            out += x + b"\n"
        elif isinstance(x, str):
            out += x.encode("utf-8") + b"\n"
        else:
            out += json.dumps(x, ensure_ascii=False).encode("utf-8") + b"\n"
    path.write_bytes(out)
    return path


# (line 2 content, expected reason) -- line 1 and 3 are good alpaca records
ALPACA_BAD = [
    ('{"instruction": "问", "output": "答"', "malformed JSON: Expecting ',' delimiter (column 35)"),
    ({"instruction": "问"}, "missing key 'output' (alpaca records have instruction, output"),
    ({"instruction": "问", "output": 42}, "'output' is a number, expected text"),
    ({"instruction": ["问"], "output": "答"}, "'instruction' is a list, expected text"),
    ({"instruction": "问", "input": "", "output": "   "}, "'output' is empty (an empty reply)"),
    ({"instruction": "", "input": "", "output": "答"}, "'instruction' is empty"),
    ({"instruction": "问", "output": "答", "history": [["只有问题"]]},
     "history[0] must be a [question, answer] pair of texts"),
    ({"instruction": "问", "output": "答", "history": "x"}, "'history' is text, expected a list"),
    ({"instruction": "问", "output": "答", "system": 1}, "'system' is a number, expected text"),
    ('"just a string"', "record is text, expected a JSON object"),
    ("[1, 2]", "record is a list, expected a JSON object"),
]


@pytest.mark.parametrize("bad,reason", ALPACA_BAD, ids=[r[:25] for _, r in ALPACA_BAD])
def test_data_bad_alpaca_record(tmp_path, bad, reason):
    path = jsonl(tmp_path / "d.jsonl", [GOOD, bad, GOOD])
    fr = read_file(path, "alpaca")
    assert len(fr.problems) == 1, fr.problems
    assert fr.problems[0].startswith(f"{path}:2: {reason}")
    assert (fr.records, fr.skipped, len(fr.conversations)) == (3, 1, 2)


SHAREGPT_BAD = [
    ([["human", "a"], ["human", "b"]],
     "conversations[1] (human): expected an assistant turn here, found a user turn"),
    ([["gpt", "a"], ["human", "b"]], "conversations[0] (gpt): expected a user turn here, found an assistant"),
    ([["human", "a"], ["gpt", "b"], ["human", "c"]], "conversations[2] (human) is a user turn with no reply"),
    ([["human", "a"], ["gpt", ""]], "conversations[1] (gpt) is empty (an empty reply)"),
    ([["human", "a"], ["system", "s"], ["gpt", "b"]],
     "conversations[1] (system): a system message is only allowed before the first turn"),
    ([["human", "a"], ["function_call", "{}"]], "conversations[1] has unknown role 'function_call'"),
    ([], "'conversations' is an empty list"),
]


@pytest.mark.parametrize("turns,reason", SHAREGPT_BAD, ids=[r[:30] for _, r in SHAREGPT_BAD])
def test_data_bad_sharegpt_record(tmp_path, turns, reason):
    conv = [{"from": f, "value": v} for f, v in turns]
    path = jsonl(tmp_path / "d.jsonl", [{"conversations": [{"from": "human", "value": "好"},
                                                            {"from": "gpt", "value": "好"}]},
                                        {"conversations": conv}])
    fr = read_file(path)
    assert fr.format == "sharegpt"
    assert [p.split(": ", 1)[0] for p in fr.problems] == [f"{path}:2"]
    assert fr.problems[0].split(": ", 1)[1].startswith(reason), fr.problems[0]


@pytest.mark.parametrize("rec,reason", [
    ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]},
     "messages[1] has unknown role 'tool'"),
    ({"messages": [{"role": "user", "content": "a"}, {"content": "b"}]}, "missing key messages[1].role"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": None}]},
     "missing key messages[1].content"),
    ({"messages": [{"role": "user", "content": "a"}, "b"]}, "messages[1] is text, expected an object"),
    ({"messages": {"role": "user"}}, "'messages' is an object, expected a list"),
    ({"conversation": [{"human": "a"}]}, "missing key conversation[0].assistant"),
    ({"kind": "x", "input": "a", "target": ""}, "'target' is empty (an empty reply)"),
])
def test_data_bad_other_formats(tmp_path, rec, reason):
    path = jsonl(tmp_path / "d.jsonl", [rec])
    fr = read_file(path)
    assert len(fr.problems) == 1 and fr.problems[0].startswith(f"{path}:1: {reason}"), fr.problems


def test_data_gbk_bytes_reported_with_hint(tmp_path):
    gbk = json.dumps({"instruction": "你好", "output": "世界"}, ensure_ascii=False).encode("gbk")
    path = jsonl(tmp_path / "d.jsonl", [GOOD, gbk, GOOD])
    fr = read_file(path)
    assert len(fr.conversations) == 2
    assert fr.problems == [f"{path}:2: not valid UTF-8 (byte 0x{gbk[17]:02x} at byte 18 of the line); "
                           "the text looks GBK/GB18030-encoded: convert the file with "
                           "`iconv -f GB18030 -t UTF-8 IN > OUT`"]
    # the same inside a JSON list: the bad record is named by its line, the others are read
    lst = tmp_path / "d.json"
    lst.write_bytes(b"[\n" + json.dumps(GOOD).encode() + b",\n" + gbk + b",\n"
                    + json.dumps(GOOD).encode() + b"\n]\n")
    fr = read_file(lst)
    assert len(fr.conversations) == 2 and len(fr.problems) == 1
    assert fr.problems[0].startswith(f"{lst}:3: not valid UTF-8 (byte 0x")
    assert "GB18030" in fr.problems[0]


def test_data_json_list_malformed_stops_with_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n{"instruction": "a", "output": "b"},\n{"instruction": "c" "output": "d"},\n'
                    '{"instruction": "e", "output": "f"}\n]', encoding="utf-8")
    fr = read_file(path)
    assert len(fr.conversations) == 1
    assert fr.problems == [f"{path}:3: malformed JSON: Expecting ',' delimiter (column 21); "
                           "the records after this point were not read"]
    path.write_text('[{"instruction": "a", "output": "b"}\n\n{"instruction": "c"}]', encoding="utf-8")
    fr = read_file(path)
    assert fr.problems[0].startswith(f"{path}:3: malformed JSON: expected ',' or ']' after a record "
                                     "but found '{'")
    path.write_text('[{"instruction": "a", "output": "b"},\n', encoding="utf-8")
    assert read_file(path).problems[0].startswith(f"{path}:2: malformed JSON: Expecting value")


def test_data_pretty_printed_object_is_explained(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("\n" + json.dumps({"data": [GOOD]}, indent=2), encoding="utf-8")
    fr = read_file(path)
    assert fr.problems == [f"{path}:2: the file is one JSON object (keys 'data'), not a list of records; "
                           "write the records as a JSON list [{...}, {...}] or one record per line (JSONL)"]


@pytest.mark.parametrize("content", ["", "\n\n  \n", "[]", "[\n]\n"])
def test_data_empty_file(tmp_path, content):
    path = tmp_path / "d.json"
    path.write_text(content, encoding="utf-8")
    fr = read_file(path)
    assert fr.problems == [f"{path}:1: empty file: no records"] and fr.records == 0
    with pytest.raises(DataError) as e:
        read_conversations(path, skip_bad=True)
    assert "no usable conversation left" in str(e.value)


def test_data_unknown_format(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [{"q": "a", "a": "b"}] * 3)
    fr = read_file(path)
    assert fr.format == "unknown" and (fr.records, fr.skipped) == (3, 3)
    assert len(fr.problems) == 1
    assert fr.problems[0].startswith(f"{path}:1: cannot tell the data format from the record keys ('q', 'a')")
    assert fr.problems[0].endswith("Rename the keys or pass --format")
    with pytest.raises(ZhloraError, match="unknown data format 'csv'; use one of: auto, alpaca"):
        read_file(path, "csv")


def test_data_missing_file_is_an_error(tmp_path):
    with pytest.raises(ZhloraError, match="no such file"):
        read_conversations(tmp_path / "nope.jsonl")


def test_data_skip_bad_counts(tmp_path):
    a = jsonl(tmp_path / "a.jsonl", [GOOD, {"instruction": "x"}, "{oops", GOOD, GOOD])
    chat = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    b = jsonl(tmp_path / "b.jsonl", [{"conversations": [{"from": "human", "value": "q"}]}, chat])
    with pytest.raises(DataError) as e:
        read_conversations([a, b])
    assert e.value.total == 3
    msg = str(e.value)
    assert msg.startswith("3 problem(s) in the input data:\n  " + f"{a}:2: missing key 'output'")
    assert "3 of 7 record(s) are bad" in msg and "skip_bad=true" in msg
    res = read_conversations([a, b], skip_bad=True)
    assert (len(res.conversations), res.skipped, res.records, len(res.problems)) == (4, 3, 7, 3)
    assert res.formats == {str(a): "alpaca", str(b): "sharegpt"}
    assert [c.origin for c in res.conversations] == [f"{a}:1", f"{a}:4", f"{a}:5", f"{b}:2"]
    assert res.problems[2] == f"{b}:1: conversations[0] (human) is a user turn with no reply after it"


def test_data_many_problems_all_listed(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [GOOD] + [{"instruction": "x", "output": ""}] * 30)
    fr = read_file(path)
    assert len(fr.problems) == 30
    assert fr.problems[-1] == f"{path}:31: 'output' is empty (an empty reply)"
    with pytest.raises(DataError) as e:
        read_conversations(path)
    assert "... and 10 more" in str(e.value)


def test_data_check_cli_reports_problems_without_traceback(tmp_path):
    good = jsonl(tmp_path / "good.jsonl", [GOOD, GOOD])
    bad = jsonl(tmp_path / "bad.jsonl", [GOOD, {"instruction": "x", "output": 3}, b"\xff\xfe",
                                        '{"instruction": ', {"conversations": []}])
    empty = tmp_path / "empty.json"
    empty.write_text("", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "zhlora", "data", "check", str(good), str(bad), str(empty)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    out = proc.stdout
    assert f"{bad}:2: 'output' is a number, expected text" in out
    assert f"{bad}:3: not valid UTF-8 (byte 0xff at byte 1 of the line); re-save the file as UTF-8" in out
    assert f"{bad}:4: malformed JSON: Expecting value (column 17)" in out
    assert f"{bad}:5: missing key 'instruction' (alpaca records have" in out
    assert f"{empty}:1: empty file: no records" in out
    assert "records: 5 (1 good, 4 with problems)" in out
    assert "3 file(s): 3 good conversation(s), 5 problem(s)" in out
    assert main(["data", "check", str(good)]) == 0


def test_data_convert_cli_bad_input_is_a_message(tmp_path, capsys):
    bad = jsonl(tmp_path / "bad.jsonl", [GOOD, {"instruction": "x"}])
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zhlora data: error: 1 problem(s) in the input data:")
    assert f"{bad}:2: missing key 'output'" in err and not out.exists()
    with pytest.raises(SystemExit):  # argparse refuses an unknown --format with its usage line
        main(["data", "check", str(bad), "--format", "nope"])


def test_data_deeply_nested_json_is_a_problem(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [GOOD, "[" * 100000 + "]" * 100000, GOOD])
    fr = read_file(path)
    assert fr.problems == [f"{path}:2: JSON nested too deeply to read"]
    assert len(fr.conversations) == 2
