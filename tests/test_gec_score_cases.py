"""ChERRANT parity on its 31 reference cases, the 30-case corpus and ChERRANT's demo files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from zhlora.gec.scoring import (m2_text, parallel_to_m2, read_m2, read_para, score, score_para)

ASSETS = Path(__file__).parent / "assets" / "gec"
CASES = [json.loads(line) for line in (ASSETS / "cases.jsonl").open(encoding="utf-8")]


def _per_sentence(result) -> list[dict]:
    return [{"n": s.n, "tp": s.tp, "fp": s.fp, "fn": s.fn} for s in result.sentences]


def _expected_per_sentence(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "per_sentence.jsonl").open(encoding="utf-8")]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_gec_score_case_m2_and_counts(case):
    ref_block, hyp_block = parallel_to_m2(["\t".join(["1", case["src"], *case["refs"]]),
                                           "\t".join(["1", case["src"], case["hyp"]])])
    assert ref_block == case["expected_ref_m2"]
    expected = case.get("single_line_file_result", case)  # c28: ChERRANT crashes on 2+ lines
    if case["expected_hyp_m2"] != "crash":
        assert hyp_block == case["expected_hyp_m2"]
    result = score([hyp_block], [ref_block])
    assert (result.tp, result.fp, result.fn) == (expected["tp"], expected["fp"], expected["fn"])
    assert (result.p, result.r, result.f05) == (expected["p"], expected["r"], expected["f05"])


def test_gec_score_cases_corpus_para_to_score():
    folder = ASSETS / "cases_corpus"
    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    result = score_para(folder / "hyp.para", folder / "ref.para", workers=1)
    assert (result.tp, result.fp, result.fn, result.p, result.r, result.f05) == tuple(
        expected[k] for k in ("tp", "fp", "fn", "p", "r", "f05"))
    assert _per_sentence(result) == _expected_per_sentence(folder)
    assert result.notes == []
    for name in ("hyp", "ref"):
        blocks = parallel_to_m2(read_para(folder / f"{name}.para"))
        assert m2_text(blocks) == (folder / f"{name}.m2.char").read_text(encoding="utf-8")


def test_gec_score_cherrant_demo_files(tmp_path):
    folder = ASSETS / "chERRANT_samples"
    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    out = tmp_path / "demo.hyp.m2"
    result = score_para(folder / "demo.hyp.para", folder / "demo.ref.m2.char", fmt="m2",
                        m2_out=out, workers=1)
    assert out.read_text(encoding="utf-8") == (folder / "demo.hyp.m2.char").read_text(encoding="utf-8")
    assert (result.tp, result.fp, result.fn, result.p, result.r, result.f05) == tuple(
        expected[k] for k in ("tp", "fp", "fn", "p", "r", "f05"))
    assert _per_sentence(result) == _expected_per_sentence(folder)
    # the M2 route gives the same numbers
    again = score(read_m2(out), read_m2(folder / "demo.ref.m2.char"))
    assert _per_sentence(again) == _per_sentence(result)
