"""gec eval --decoding rescore: confusion candidates judged on the whole sentence."""
from __future__ import annotations

import json

import pytest
import torch

from test_demo_confusion import CONF, SOURCES, engine  # noqa: F401  (engine is a fixture)

from zhlora.errors import ZhloraError
from zhlora.gec.rescore import RescoreOptions, View, correct_rescored, verify


def _cands(ch: str, vocab) -> list[str]:
    return [c for tab in (CONF.same_tone, CONF.other_tone, CONF.glyph) for c in tab.get(ch, "") if c in vocab]


def test_huge_margin_copies_the_source(engine):
    opts = RescoreOptions(margin=1e9)
    assert correct_rescored(engine, SOURCES, opts=opts, confusion=CONF) == SOURCES


def test_no_margin_changes_every_position_that_has_candidates(engine):
    vocab = engine.tokenizer.get_vocab()
    opts = RescoreOptions(margin=-1e9, propose=-1e9, top_k=1)
    for src, hyp in zip(SOURCES, correct_rescored(engine, SOURCES, opts=opts, confusion=CONF)):
        assert len(hyp) == len(src)
        for s, h in zip(src, hyp):
            assert h in _cands(s, vocab) if _cands(s, vocab) else h == s


def _sentence_logprob(model, row: list[int], start: int) -> float:
    """log P(row[start:] | row[:start]) from one unpadded forward (independent of verify)."""
    ids = torch.tensor([row])
    lp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]   # (T, V)
    return sum(lp[t - 1, row[t]].item() for t in range(start, len(row)))


def test_gain_is_the_whole_sentence_logprob_difference(engine):
    tok = engine.tokenizer
    vocab = tok.get_vocab()
    src = SOURCES[1]
    answer = [vocab[c] for c in src] + [tok.eos_token_id]
    view = View([[tok.bos_token_id]], weight=0.5)      # a plain-text view, weighted
    i, c = src.index("错"), vocab["在"]          # any other in-vocabulary char
    other = (SOURCES[0], [vocab[x] for x in SOURCES[0]] + [tok.eos_token_id])
    views = View([[tok.bos_token_id], [tok.bos_token_id]], weight=0.5)
    with engine.using(None) as model:
        gains = verify(model, views, [other[1], answer], [(1, i, c), (0, 0, vocab["天"])],
                       tok.pad_token_id, batch_size=2)
        edited = list(answer)
        edited[i] = c
        want = 0.5 * (_sentence_logprob(model, [tok.bos_token_id] + edited, 1)
                      - _sentence_logprob(model, [tok.bos_token_id] + answer, 1))
        single = verify(model, view, [answer], [(0, i, c)], tok.pad_token_id, batch_size=1)
    assert gains[(1, i, c)] == pytest.approx(want, abs=1e-4)
    assert single[(0, i, c)] == pytest.approx(want, abs=1e-4)


def test_batched_equals_one_by_one(engine):
    opts = RescoreOptions(margin=0.0, propose=-5.0)
    both = correct_rescored(engine, SOURCES, opts=opts, confusion=CONF, batch_size=3)
    single = [correct_rescored(engine, [s], opts=opts, confusion=CONF)[0] for s in SOURCES]
    assert both == single


@pytest.mark.parametrize("kw", [dict(top_k=0), dict(lm_weight=0, answer_weight=0), dict(lm_weight=-1)])
def test_bad_options_are_refused(kw):
    with pytest.raises(ZhloraError):
        RescoreOptions(**kw).check()


def test_gec_eval_cli_rescore(tiny_llama, tmp_path):
    from zhlora.cli import main

    data = tmp_path / "t.para"
    data.write_text("1\t今田天气很好。\t今天天气很好。\n2\t他的措误。\t他的错误。\n", encoding="utf-8")
    out = tmp_path / "ev"
    assert main(["gec", "eval", "--model", str(tiny_llama), "--data", str(data), "--decoding", "rescore",
                 "--margin", "1e9", "--lm-weight", "0.5", "--top-k", "1", "--output", str(out)]) == 0
    preds = [json.loads(x)["prediction"] for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert preds == ["今田天气很好。", "他的措误。"]          # margin 1e9: nothing changes
    assert "lm weight 0.5, top-k 1" in (out / "report.md").read_text(encoding="utf-8")
