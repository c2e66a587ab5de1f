"""`zhlora chat` through a pipe, `zhlora predict` (resume, bad lines, batching), `zhlora webui`."""
from __future__ import annotations

import json
import subprocess

import pytest
from test_infer_fixtures import (PROMPTS, convs, engine, infer_setup, read_jsonl,  # noqa: F401
                                 subprocess_env, zhlora_cmd)

from zhlora.cli import main
from zhlora.infer.engine import GenerationOptions
from zhlora.infer.predict import run_predict
from zhlora.infer.prompts import read_prompts

OPTS = GenerationOptions(max_new_tokens=10)


def run(*args, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(zhlora_cmd(*args), input=stdin, capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)


def test_infer_chat_pipe(infer_setup, engine):
    base, adapters = infer_setup
    script = f"{PROMPTS[0]}\n/adapter poem\n{PROMPTS[0]}\n/adapter none\n{PROMPTS[1]}\n/adapter nope\n/exit\n你好\n"
    r = run("chat", "--model", base, "--adapter", f"gec={adapters['gec']}", "--adapter",
            f"poem={adapters['poem']}", "--max-new-tokens", 10, stdin=script)
    assert r.returncode == 0, r.stderr
    want = [engine.generate(convs([PROMPTS[0]]), "gec", OPTS)[0], "(adapter: poem)",
            engine.generate(convs([PROMPTS[0]]), "poem", OPTS)[0], "(adapter: base)",
            engine.generate(convs([PROMPTS[1]]), None, OPTS)[0]]
    lines = r.stdout.split("\n")
    assert lines[:5] == want
    assert lines[5].startswith("error: unknown adapter 'nope'")
    assert len(lines) == 7 and lines[6] == ""  # /exit: the last prompt is not answered


def _write_input(path):
    recs = [{"instruction": PROMPTS[0], "id": "a"}, {"messages": [{"role": "user", "content": PROMPTS[1]}]},
            {"prompt": PROMPTS[2]}, {"text": PROMPTS[3]},
            {"instruction": PROMPTS[1], "input": PROMPTS[0], "output": "参考"}]
    lines = [json.dumps(r, ensure_ascii=False) for r in recs]
    lines.insert(2, '{"instruction": 5}')           # line 3: wrong type
    lines.insert(4, "{not json")                    # line 5: bad JSON
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_infer_predict_resume(infer_setup, engine, tmp_path, capsys):
    """The real CLI entry point, in-process (a subprocess would only add start-up time)."""
    base, adapters = infer_setup
    inp, out = _write_input(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    args = [str(a) for a in ("predict", "--model", base, "--adapter", f"gec={adapters['gec']}", "--input", inp,
                             "--output", out, "--max-new-tokens", 10, "--batch-size", 2)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"{inp}:3: `instruction` must be a string" in err and f"{inp}:5: invalid JSON" in err
    # which template each model uses, and why (templates.template_for_model for the base)
    assert "template (base): alpaca (" in err and "template (gec): alpaca (the adapter metadata)" in err
    first = read_jsonl(out)
    assert [x["line"] for x in first] == [1, 2, 4, 6, 7]
    assert [x["id"] for x in first] == ["a", 2, 4, 6, 7] and first[-1]["reference"] == "参考"
    records, _ = read_prompts(inp)
    assert [x["output"] for x in first] == engine.generate([p.conv for p in records], "gec", OPTS)
    assert all(x["adapter"] == "gec" and x["seconds"] > 0 for x in first)
    # keep one finished line plus a torn half line, as a killed run would leave
    kept = out.read_text(encoding="utf-8").splitlines()
    out.write_text(kept[0] + "\n" + kept[1][:15], encoding="utf-8")
    assert main(args) == 0
    assert "4 generated, 1 already in" in capsys.readouterr().err
    again = read_jsonl(out)
    assert [x["line"] for x in again] == [1, 2, 4, 6, 7]
    assert again[0] == first[0] and [x["output"] for x in again] == [x["output"] for x in first]


def test_infer_predict_text_batched_equals_single(infer_setup, engine, tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(PROMPTS) + "\n\n", encoding="utf-8")
    outs = {}
    for bs in (1, 4):
        out = tmp_path / f"out{bs}.jsonl"
        s = run_predict(engine, inp, out, "poem", OPTS, batch_size=bs, progress=False)
        assert (s.generated, s.bad_lines) == (4, 0)
        outs[bs] = [x["output"] for x in read_jsonl(out)]
    assert outs[1] == outs[4] == engine.generate(convs(), "poem", OPTS, batch_size=1)
    s = run_predict(engine, inp, tmp_path / "out4.jsonl", "poem", OPTS, batch_size=4, progress=False)
    assert (s.generated, s.already_done) == (0, 4)


def test_infer_predict_refuses_foreign_output(engine, tmp_path):
    from zhlora.errors import ZhloraError

    (tmp_path / "in.txt").write_text("你好\n", encoding="utf-8")
    (tmp_path / "out.jsonl").write_text("something else\n", encoding="utf-8")
    with pytest.raises(ZhloraError, match="out.jsonl:1: not a zhlora predict record"):
        run_predict(engine, tmp_path / "in.txt", tmp_path / "out.jsonl", None, OPTS, progress=False)


def test_infer_webui_without_gradio(infer_setup, capsys):
    try:
        import gradio  # noqa: F401
    except ImportError:
        assert main(["webui", "--model", str(infer_setup[0])]) == 2
        assert "pip install 'zhlora[webui]'" in capsys.readouterr().err
        return
    from zhlora.infer.engine import Engine
    from zhlora.infer.webui import build_blocks

    assert build_blocks(Engine.load(infer_setup[0])) is not None


def test_infer_webui_handler_streams_the_adapter_answer(engine):
    """The page's handler (no gradio needed) streams exactly the engine's answer, with history."""
    from zhlora.conversation import Conversation, Message
    from zhlora.infer.webui import make_respond

    name = engine.adapter_names[0]
    steps = list(make_respond(engine)("你好", [], name, "", 12, 0.0, 1.0))
    assert len(steps) >= 1 and all(box == "" for box, _ in steps)
    history = steps[-1][1]
    want = engine.generate([Conversation([Message("user", "你好")])], adapter=name,
                           options=engine.default_options(name).replace(max_new_tokens=12))[0]
    assert history == [{"role": "user", "content": "你好"}, {"role": "assistant", "content": want}]
