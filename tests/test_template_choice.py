"""template_for_model: which template a folder gets and why; what data check and train print
about it before training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _official import TEMPLATES
from zhlora.chat_jinja import chat_template_jinja
from zhlora.errors import ZhloraError
from zhlora.templates import get_template, template_for_model

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "data" / "zh_instruct_sample.jsonl"


def _folder(tmp_path, config: dict, chat_template: str | None = None, **tok_cfg) -> Path:
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if chat_template is not None:
        tok_cfg["chat_template"] = chat_template
    (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg), encoding="utf-8")
    return d


@pytest.mark.parametrize("jinja,want", [
    (None, "chatml"),
    ("Qwen--Qwen2-7B-Instruct.jinja", "chatml"),
    ("Qwen-Qwen2.5-7B-Instruct.jinja", "qwen2.5"),
])
def test_qwen2_and_qwen25_told_apart_by_their_chat_template(tmp_path, jinja, want):
    text = (TEMPLATES / jinja).read_text(encoding="utf-8") if jinja else None
    choice = template_for_model(_folder(tmp_path, {"model_type": "qwen2"}, text, eos_token="<|im_end|>"))
    assert choice.name == want
    assert ("renders prompts exactly as" in choice.reason) == bool(jinja)
    assert ("no chat_template" in choice.reason) == (not jinja)


def test_qwen3_by_its_chat_template_or_its_config(tmp_path):
    text = (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")
    assert template_for_model(_folder(tmp_path, {"model_type": "qwen2"}, text)).name == "qwen3"
    assert template_for_model(_folder(tmp_path, {"model_type": "qwen3"})).name == "qwen3"


def test_an_unmatched_chat_template_falls_back_and_says_so(tmp_path):
    text = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    choice = template_for_model(_folder(tmp_path, {"model_type": "qwen2"}, text))
    assert choice.name == "chatml" and "renders like none of chatml, qwen2.5, qwen3" in choice.reason
    assert "template=" in choice.reason


def test_llama_family_templates(tmp_path):
    meta_llama2 = (TEMPLATES / "meta-llama--Llama-2-7b-chat-hf.jinja").read_text(encoding="utf-8")
    d = _folder(tmp_path, {"model_type": "llama", "vocab_size": 32000}, meta_llama2, bos_token="<s>", eos_token="</s>")
    assert template_for_model(d).name == "llama2"
    assert template_for_model(_folder(tmp_path, {"model_type": "llama", "vocab_size": 55296})).name == "chinese-alpaca-2"
    assert template_for_model(_folder(tmp_path, {"model_type": "llama", "vocab_size": 49954})).name == "alpaca"


def test_glm4_chat_template_and_explicit_and_recorded_choices(tmp_path):
    glm = (TEMPLATES / "THUDM--glm-4-9b-chat.jinja").read_text(encoding="utf-8")
    d = _folder(tmp_path, {"model_type": "glm4"}, glm)
    assert template_for_model(d).name == "glm4"
    assert template_for_model(d, "chatml").reason == "template= given"
    with pytest.raises(ZhloraError, match="unknown template"):
        template_for_model(d, "nope")
    (d / "chat_template.jinja").write_text(chat_template_jinja("qwen2.5"), encoding="utf-8")
    c = template_for_model(d)  # chat_template.jinja wins over tokenizer_config.json, as in transformers 5
    assert c.name == "qwen2.5" and "written by zhlora" in c.reason
    (d / "zhlora_merged.json").write_text(json.dumps({"template": "alpaca"}), encoding="utf-8")
    assert template_for_model(d).name == "alpaca"


def _alpaca_overhead(tok) -> int:
    """alpaca on a character vocabulary: BOS + system + the two headers + EOS, one char each."""
    t = get_template("alpaca")
    return 1 + len(t.default_system + "\n\n") + len("### Instruction:\n") + len("\n\n### Response:\n") + 1


def test_data_check_prints_template_and_an_example(tiny_llama, capsys):
    from zhlora.cli import main
    from zhlora.models.loading import load_tokenizer

    assert main(["data", "check", str(SAMPLE), "--model", str(tiny_llama), "--cutoff-len", "160"]) == 0
    out = capsys.readouterr().out
    assert "template: alpaca (family llama's default for this config; the folder has no chat_template)" in out
    n = _alpaca_overhead(load_tokenizer(tiny_llama))
    assert f"the template adds {n} tokens per record (median; min {n}, max {n})" in out
    example = out.split("trained tokens in [[...]]):\n")[1].split("\n\n")[0]
    first = json.loads(SAMPLE.read_text(encoding="utf-8").splitlines()[0])
    assert example.startswith("  | <s>Below is an instruction")
    assert f"[[{first['output']}</s>]]" in example


def test_train_prints_template_cost_before_the_first_step(tiny_llama, tmp_path, capsys):
    from zhlora.cli import main
    from zhlora.data import stats
    from zhlora.data.readers import read_conversations
    from zhlora.models.loading import load_tokenizer

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(SAMPLE.read_text(encoding="utf-8").splitlines()[:24]) + "\n", encoding="utf-8")
    out = tmp_path / "a"
    assert main(["train", f"model={tiny_llama}", f"data={data}", f"output_dir={out}", "max_steps=1",
                 "save_steps=0", "report_to=none", "cutoff_len=170", "eval_ratio=0", "packing=false"]) == 0
    text = capsys.readouterr().out
    tok = load_tokenizer(tiny_llama)
    ts = stats.token_stats(read_conversations([str(data)]).conversations, tok, get_template("alpaca"), 170)
    assert "template: alpaca (family llama's default" in text
    n = _alpaca_overhead(tok)
    assert f"template alpaca: adds {n} tokens per record (median; min {n}, max {n})" in text
    assert len(ts.truncated) > 0
    kept = ts.trained_tokens + ts.lost_label_tokens
    assert (f"cutoff_len=170: truncates {len(ts.truncated)} of 24 record(s), losing {ts.lost_label_tokens} "
            f"of {kept} label tokens") in text
    assert text.index("cutoff_len=170: truncates") < text.index("done:")
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == chat_template_jinja("alpaca")
