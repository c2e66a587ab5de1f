"""What ChERRANT crashes on is scored as "no edits"; bad input gets an actionable error;
the cost function and the F computation behave as ChERRANT's."""
from __future__ import annotations

import pytest

from zhlora.errors import DataError, ZhloraError
from zhlora.gec.scoring import f_score, parallel_to_m2, score, score_para
from zhlora.gec.scoring.align import cheapest_alignments
from zhlora.gec.scoring.merge import levenshtein, merge_alignment
from zhlora.gec.scoring.resources import sub_cost

REF = ["1\t我今天很高心。\t我今天很高兴。", "2\t他再家里看书。\t他在家里看书。",
       "3\t我喜欢吃果。\t我喜欢吃水果。"]


def test_gec_score_empty_prediction_in_the_middle_is_no_edits():
    hyp = ["1\t我今天很高心。\t我今天很高兴。", "2\t他再家里看书。\t", "3\t我喜欢吃果。\t我喜欢吃水果。"]
    blocks = parallel_to_m2(hyp)
    assert blocks[1] == "S 他 再 家 里 看 书 。"  # no T/A lines: nothing proposed
    result = score_para(hyp, REF, workers=1)
    assert (result.tp, result.fp, result.fn) == (2, 0, 1)
    assert [(s.tp, s.fp, s.fn) for s in result.sentences] == [(1, 0, 0), (0, 0, 1), (1, 0, 0)]


def test_gec_score_short_and_long_hypotheses_are_repaired_and_noted():
    short = score_para(REF[:2], REF, workers=1)
    assert (short.tp, short.fp, short.fn) == (2, 0, 1)
    assert "missing 1 are scored as 'no edits'" in short.notes[0]
    extra = score_para(REF + ["4\t你好。\t您好。"], REF, workers=1)
    assert (extra.tp, extra.fp, extra.fn) == (3, 0, 0)
    assert "extra 1 are ignored" in extra.notes[0]
    swapped = score_para([REF[1], REF[0], REF[2]], REF, workers=1)
    assert "differs from the reference source (lines 1, 2)" in swapped.notes[0]


def test_gec_score_blocks_api_pads_missing_blocks():
    refs = parallel_to_m2(REF)
    result = score([], refs)
    assert (result.tp, result.fp, result.fn, result.p, result.r, result.f05) == (0, 0, 3, 1.0, 0.0, 0.0)


def test_gec_score_bad_input_errors(tmp_path):
    with pytest.raises(DataError, match=r"<hypothesis para lines>:2: expected id<TAB>source"):
        score_para(["1\t我\t我", "只有一列"], REF[:2], workers=1)
    with pytest.raises(ZhloraError, match="fmt='txt' is not a format"):
        score_para(REF, REF, fmt="txt")
    with pytest.raises(ZhloraError, match="cannot read the hypothesis para file"):
        score_para(tmp_path / "missing.para", REF)
    out = tmp_path / "hyp.m2"
    out.write_text("old", encoding="utf-8")
    with pytest.raises(ZhloraError, match="already exists"):
        score_para(REF, REF, m2_out=out, workers=1)
    score_para(REF, REF, m2_out=out, workers=1, overwrite=True)
    assert out.read_text(encoding="utf-8").startswith("S 我 今 天 很 高 心 。\nT0-A0 ")


def test_gec_score_parallel_workers_match_single_process():
    lines = [f"{n}\t{s}\t{t}" for n, (s, t) in enumerate(
        [("我今天很高心。", "我今天很高兴。"), ("他非常很喜欢音乐。", "他很喜欢音乐。"),
         ("我们旅游去陌生的地方。", "我们去陌生的地方旅游。"), ("我們一起學習中聞。", "我們一起學習中文。")] * 10)]
    assert parallel_to_m2(lines, workers=2) == parallel_to_m2(lines, workers=1)


def test_gec_score_substitution_costs():
    # semantic (Cilin: 4 unknown, else 2 * (3 - shared levels)) / 6 + spelling + punctuation
    assert sub_cost("再", "在") == 4 / 6.0 + 0.0 + 0.25  # Ka14/Kb01, same reading zai
    assert sub_cost("高", "低") == 2 / 6.0 + 0.5 + 0.25  # Jb04/Jb05, different readings
    assert sub_cost("再", "猫") == 6 / 6.0 + 0.5 + 0.25  # Ka14/Bi08
    assert sub_cost("，", "、") == 4 / 6.0 + 0.5 + 0.0  # two punctuation marks, not CJK
    assert sub_cost("，", "a") == 4 / 6.0 + 0.5 + 0.499  # exactly one is punctuation
    assert sub_cost("好", "好") == 0


def test_gec_score_alignment_ties_are_all_enumerated():
    src, tgt = list("我们刚到公园就被天下雨了。"), list("我们刚到公园天就下雨了。")
    edits = [merge_alignment(a, src, tgt) for a in cheapest_alignments(src, tgt)]
    assert edits == [[("D", 6, 8, 6, 6), ("I", 9, 9, 7, 8)], [("I", 6, 6, 6, 7), ("D", 7, 9, 8, 8)]]
    # a match cell allows only "M": of two equal chars, the first is the one deleted (c15)
    assert [list(a) for a in cheapest_alignments(list("的的计"), list("的计"))] == [
        [("D", 0, 1, 0, 0), ("M", 1, 2, 0, 1), ("M", 2, 3, 1, 2)]]


def test_gec_score_f_and_levenshtein():
    assert f_score(0, 0, 0) == (1.0, 1.0, 1.0)
    assert f_score(0, 3, 0) == (0.0, 1.0, 0.0)
    assert f_score(1, 0, 1) == (1.0, 0.5, 0.8333)
    assert f_score(2, 1, 1, beta=1.0) == (0.6667, 0.6667, 0.6667)
    assert levenshtein("冬阴功", "冬阴") == 1 and levenshtein("", "ab") == 2 and levenshtein("ab", "ba") == 2
