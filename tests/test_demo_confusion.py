"""gec eval --decoding confusion: one character per source character, margin decides."""
from __future__ import annotations

import pytest

from zhlora.gec.confusion import ConfusionSet
from zhlora.gec.constrained import build_choices, candidate_table, correct

SOURCES = ["今天天气很好。", "他的错误在于没有仔细检查。"]
CONF = ConfusionSet(same_tone={"天": "田添", "气": "汽器", "很": "狠"}, other_tone={"好": "号"},
                    glyph={"错": "措"}, source="test")


@pytest.fixture(scope="module")
def engine(tiny_llama):
    from zhlora.infer.engine import Engine

    return Engine.load(tiny_llama)


def test_candidate_table_keeps_only_single_token_characters(engine):
    table = candidate_table(engine.tokenizer, CONF)
    vocab = engine.tokenizer.get_vocab()
    for ch, ids in table.items():
        assert len(ids) == len(set(ids))
        assert all(i in vocab.values() for i in ids)
    # every table entry is exactly the in-vocabulary candidates of CONF, in the sets' order
    for ch in ("天", "气", "很", "好", "错"):
        want = [vocab[c] for tab in (CONF.same_tone, CONF.other_tone, CONF.glyph)
                for c in tab.get(ch, "") if c in vocab]
        assert table.get(ch, []) == want, ch
    assert any(c not in vocab for c in "田添汽器狠号措")     # some candidates are dropped
    choices = build_choices(["天X"], engine.tokenizer, table)
    assert choices.keep[0][0] == vocab["天"]
    assert choices.alts[0][1] == []  # no candidates for a character without them


def test_huge_margin_copies_the_source(engine):
    assert correct(engine, SOURCES, margin=1e9, confusion=CONF) == SOURCES


def test_negative_margin_takes_the_best_candidate_everywhere(engine):
    vocab = engine.tokenizer.get_vocab()
    out = correct(engine, SOURCES, margin=-1e9, confusion=CONF)
    for src, hyp in zip(SOURCES, out):
        assert len(hyp) == len(src)
        for s, h in zip(src, hyp):
            cands = [c for tab in (CONF.same_tone, CONF.other_tone, CONF.glyph)
                     for c in tab.get(s, "") if c in vocab]
            if cands:
                assert h in cands          # changed, to one of its candidates
            else:
                assert h == s              # nothing to choose from: kept


def test_batched_equals_one_by_one(engine):
    both = correct(engine, SOURCES, margin=0.0, confusion=CONF, batch_size=2)
    single = [correct(engine, [s], margin=0.0, confusion=CONF)[0] for s in SOURCES]
    assert both == single
