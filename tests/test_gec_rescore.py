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


def test_progress_bar_counts_every_forward_row(engine, monkeypatch):
    """The bar ends full: 2 views x N sentences, plus the verification rows it adds on the way."""
    import zhlora.progress as eng
    from zhlora.gec.rescore import verify_rows

    bars = []

    class Bar:
        def __init__(self, total, show, unit):
            self.total, self.n, self.totals = total, 0, [total]
            bars.append(self)

        def update(self, n):
            self.n += n

        def grow(self, n):
            self.total += n
            self.totals.append(self.total)

        def close(self):
            pass

    monkeypatch.setattr(eng, "progress_bar", Bar)
    opts = RescoreOptions(margin=0.0, propose=-1e9, top_k=2)
    correct_rescored(engine, SOURCES, opts=opts, confusion=CONF, batch_size=2, progress=True)
    (bar,) = bars
    assert bar.totals[0] == 2 * len(SOURCES) and len(bar.totals) == 2 and bar.total > 2 * len(SOURCES)
    assert bar.n == bar.total
    assert verify_rows([(0, 1, 5), (0, 2, 6), (3, 0, 7)]) == 2 + 3


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
    assert both == single and both != SOURCES     # something was corrected, the same either way


def test_decision_is_weighted_answer_lead_plus_text_gain_against_the_margin(engine):
    """One candidate at one position; its score computed here from plain unpadded forwards:
    answer_weight x left lead in the prompted answer + lm_weight x whole-sentence text gain.
    A margin just below the score makes the change, just above keeps the source."""
    from zhlora.gec.confusion import ConfusionSet
    from zhlora.gec.prompt import gec_conversation

    tok = engine.tokenizer
    vocab = tok.get_vocab()
    src = SOURCES[1]
    i, c = src.index("错"), vocab["在"]
    conf = ConfusionSet(same_tone={"错": "在"}, other_tone={}, glyph={}, source="test")
    answer = [vocab[x] for x in src] + [tok.eos_token_id]
    prompt = engine.encode(gec_conversation(src), None)
    with engine.using(None) as model:
        lp = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits.float(), -1)[0]
        lead = (lp[len(prompt) - 1 + i, c] - lp[len(prompt) - 1 + i, answer[i]]).item()
        edited = list(answer)
        edited[i] = c
        gain = (_sentence_logprob(model, [tok.bos_token_id] + edited, 1)
                - _sentence_logprob(model, [tok.bos_token_id] + answer, 1))
    score = 0.3 * lead + 0.7 * gain
    fixed = src[:i] + "在" + src[i + 1:]
    for margin, want in ((score - 1e-3, fixed), (score + 1e-3, src)):
        opts = RescoreOptions(margin=margin, answer_weight=0.3, lm_weight=0.7, top_k=1, propose=-1e9)
        assert correct_rescored(engine, [src], opts=opts, confusion=conf) == [want], (margin, score)


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
    assert main(["gec", "eval", "--model", str(tiny_llama), "--data", str(data), "--decoding", "rescore",
                 "--margin=-1e9", "--top-k", "1", "--output", str(tmp_path / "ev2")]) == 0
    preds = [json.loads(x)["prediction"] for x in (tmp_path / "ev2" / "predictions.jsonl").read_text().splitlines()]
    assert preds != ["今田天气很好。", "他的措误。"]          # the margin reached the decoder


@pytest.mark.parametrize("argv,msg", [(["--batch-size", "0"], "--batch-size must be at least 1"),
                                      (["--decoding", "rescore", "--top-k", "0"], "top-k must be at least 1"),
                                      (["--limit", "-2"], "--limit must be 0"),
                                      (["--margin", "2"], "free greedy decoding has no margin"),
                                      (["--decoding", "confusion", "--lm-weight", "0.5", "--top-k", "3"],
                                       "--lm-weight 0.5, --top-k 3 only apply to --decoding rescore"),
                                      (["--answer-weight", "1"], "only apply to --decoding rescore, not free")])
def test_gec_eval_refuses_bad_options_before_loading(tmp_path, capsys, argv, msg):
    from zhlora.cli import main

    data = tmp_path / "t.para"
    data.write_text("1\t今田天气很好。\t今天天气很好。\n", encoding="utf-8")
    # the model folder does not exist: the options must be refused before anything is loaded
    assert main(["gec", "eval", "--model", str(tmp_path / "none"), "--data", str(data),
                 "--output", str(tmp_path / "ev"), *argv]) == 2
    assert msg in capsys.readouterr().err


def test_byte_level_vocabulary_is_refused_with_a_message():
    from types import SimpleNamespace

    from zhlora.gec.constrained import require_char_vocab

    bpe = SimpleNamespace(unk_token_id=0, eos_token_id=1, get_vocab=lambda: {"çļĦ": 5, "a": 6})
    with pytest.raises(ZhloraError, match="not character-level"):
        require_char_vocab(bpe, "confusion", ["今天天气很好"])
    no_unk = SimpleNamespace(unk_token_id=None, eos_token_id=1, get_vocab=lambda: {})
    with pytest.raises(ZhloraError, match="no unknown token id"):
        require_char_vocab(no_unk, "rescore", ["今天"])
