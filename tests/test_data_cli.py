"""`zhlora data convert` round-trips; `zhlora data check` counts turns and tokens."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from zhlora.cli import main
from zhlora.conversation import Conversation, Message
from zhlora.data.readers import read_conversations
from zhlora.data.stats import length_histogram, token_stats, turn_histogram
from zhlora.models.loading import load_tokenizer
from zhlora.templates import get_template

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
Q = "你好"
ANSWER_LENGTHS = (5, 30, 60, 120)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def as_tuples(convs: list[Conversation]):
    return [(c.system, [(m.role, m.content) for m in c.messages], c.meta) for c in convs]


# -- convert -----------------------------------------------------------------------------
def test_data_convert_round_trip(tmp_path, capsys):
    extra = write_jsonl(tmp_path / "msgs.jsonl", [
        {"messages": [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "问"},
                      {"role": "assistant", "content": "答"}]}])
    inputs = [SAMPLES / "zh_instruct_sample.jsonl", SAMPLES / "zh_chat_sample.json", extra]
    out = tmp_path / "out" / "all.jsonl"
    assert main(["data", "convert", *map(str, inputs), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{SAMPLES / 'zh_chat_sample.json'}: format sharegpt (detected)" in printed
    assert f"wrote 93 conversation(s) to {out}" in printed
    original = read_conversations(inputs)
    back = read_conversations(out)
    assert back.formats == {str(out): "zhlora"}
    assert as_tuples(back.conversations) == as_tuples(original.conversations)
    assert back.conversations[92].system == "你是助手"
    assert len(out.read_text(encoding="utf-8").splitlines()) == 93
    # converting zhlora JSONL again gives the same bytes (meta survives too)
    again = tmp_path / "again.jsonl"
    assert main(["data", "convert", str(out), "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["all.jsonl"]  # no temp files left


def test_data_convert_refuses_existing_output(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "问", "output": "答"}])
    out = tmp_path / "out.jsonl"
    out.write_text("keep me", encoding="utf-8")
    assert main(["data", "convert", str(src), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["data", "convert", str(src), "-o", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == {
        "system": "", "messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}]}
    assert main(["data", "convert", str(src), "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_data_convert_skip_bad(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "问", "output": "答"},
                                              {"instruction": "问", "output": ""},
                                              {"instruction": "再问", "output": "再答"}])
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(src), "-o", str(out)]) == 2
    assert not out.exists()
    assert main(["data", "convert", str(src), "-o", str(out), "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert f"skipped {src}:2: 'output' is empty (an empty reply)" in printed
    assert "wrote 2 conversation(s)" in printed and "skipped 1 bad record(s)" in printed
    assert [c.messages[0].content for c in read_conversations(out).conversations] == ["问", "再问"]


# -- check -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from zhlora.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_data"), "llama", texts=[Q, "好"],
                           hidden=32, layers=1)


def default_length(q: str, a: str) -> int:
    """Tokens of one round in the `default` template with a char tokenizer:
    BOS + "Human: " q "\\nAssistant: " + a + EOS."""
    return 1 + len("Human: ") + len(q) + len("\nAssistant: ") + len(a) + 1


def test_data_check_token_histogram(tmp_path, tiny, capsys):
    src = write_jsonl(tmp_path / "d.jsonl", [{"instruction": Q, "output": "好" * n} for n in ANSWER_LENGTHS])
    lengths = [default_length(Q, "好" * n) for n in ANSWER_LENGTHS]
    assert lengths == [28, 53, 83, 143]
    rc = main(["data", "check", str(src), "--model", str(tiny), "--template", "default", "--cutoff-len", "60"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "tokens per record (template default" in out
    assert "min 28  median 68  mean 76.8  p95 143  max 143  total 307" in out
    for bucket in ("17-32  1", "33-64  1", "65-128  1", "129-256  1"):
        assert bucket in out
    assert "cutoff_len 60 would truncate 2 of 4 record(s) (50.0%), e.g. " + f"{src}:3" in out
    # trained = answer + EOS; the two long answers are cut to 60 - 23 (the rest) = 37 tokens
    assert f"trained tokens (train_on=all, after cutoff): {6 + 31 + 38 + 38}" in out


def test_data_check_uses_family_template(tmp_path, tiny, capsys):
    src = write_jsonl(tmp_path / "d.jsonl", [{"instruction": Q, "output": "好"}])
    assert main(["data", "check", str(src), "--model", str(tiny)]) == 0
    out = capsys.readouterr().out
    alpaca = get_template("alpaca")
    # BOS + system + "\n\n" + "### Instruction:\n" q "\n\n### Response:\n" + a + EOS
    n = 1 + len(alpaca.default_system) + 2 + len(alpaca.user[0].replace("{content}", Q)) + 1 + 1
    assert "tokens per record (template alpaca" in out
    assert f"min {n}  median {n}  mean {n}.0  p95 {n}  max {n}  total {n}" in out
    assert "would truncate 0 of 1 record(s) (0.0%)" in out


def test_data_check_turns_and_train_on_last(tiny):
    tok = load_tokenizer(tiny)
    convs = [Conversation.from_pairs([(Q, "好好"), (Q, "好")], origin="x:1"),
             Conversation.from_pairs([(Q, "好")], origin="x:2")]
    assert turn_histogram(convs) == {1: 1, 2: 1}
    tpl = get_template("default")
    everything = token_stats(convs, tok, tpl, cutoff_len=1024, train_on="all")
    last = token_stats(convs, tok, tpl, cutoff_len=1024, train_on="last")
    assert everything.trained_tokens == (2 + 1) + (1 + 1) + (1 + 1)
    assert last.trained_tokens == (1 + 1) + (1 + 1)
    # 2 rounds: the second adds the "\n" separator
    assert everything.lengths == [default_length(Q, "好好") + default_length(Q, "好") - 1 + 1,
                                  default_length(Q, "好")]


def test_data_length_histogram_buckets():
    assert length_histogram([1, 16, 17, 100, 1000]) == [
        (1, 16, 2), (17, 32, 1), (33, 64, 0), (65, 128, 1), (129, 256, 0), (257, 512, 0), (513, 1024, 1)]
    assert length_histogram([300]) == [(257, 512, 1)]


def test_data_check_template_needs_model(tmp_path, capsys):
    src = write_jsonl(tmp_path / "d.jsonl", [{"instruction": Q, "output": "好"}])
    assert main(["data", "check", str(src), "--template", "chatml"]) == 2
    assert "--template needs --model" in capsys.readouterr().err
    assert main(["data", "check", str(src), "--model", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_data_check_samples_turn_histogram(capsys):
    assert main(["data", "check", str(SAMPLES / "zh_chat_sample.json")]) == 0
    out = capsys.readouterr().out
    assert "format: sharegpt (detected)" in out
    assert "records: 12 (12 good, 0 with problems)" in out
    assert "2 turns  11" in out and "3 turns   1" in out


def test_data_conversation_message_type():
    # Conversation objects from readers are the shared type templates consume
    conv = read_conversations(SAMPLES / "zh_instruct_sample.jsonl").conversations[0]
    assert isinstance(conv.messages[0], Message) and conv.origin.endswith("zh_instruct_sample.jsonl:1")
