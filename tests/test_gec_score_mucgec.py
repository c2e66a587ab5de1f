"""ChERRANT parity on the full MuCGEC dev set (1137 sentences, 2-8 references each)."""
from __future__ import annotations

import json

import pytest

from zhlora.gec.scoring import read_m2, score, score_para


@pytest.fixture(scope="module")
def mucgec(shared_dir):
    folder = shared_dir / "cgec" / "mucgec_dev"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    return folder


def test_gec_score_mucgec_dev_full_pipeline(mucgec, tmp_path):
    """Both para files converted on 2 workers: M2 byte-identical, 1084/1635/3003, F0.5 .3622,
    and the same per-sentence choices as ChERRANT."""
    hyp_out, ref_out = tmp_path / "hyp.m2", tmp_path / "ref.m2"
    result = score_para(mucgec / "example_pred_dev.txt", mucgec / "MuCGEC_dev.txt",
                        m2_out=hyp_out, ref_m2_out=ref_out, workers=2)
    assert hyp_out.read_bytes() == (mucgec / "example_pred_dev.m2.char").read_bytes()
    assert ref_out.read_bytes() == (mucgec / "MuCGEC_dev.m2.char").read_bytes()
    assert (result.tp, result.fp, result.fn) == (1084, 1635, 3003)
    assert (result.p, result.r, result.f05) == (0.3987, 0.2652, 0.3622)
    expected = [json.loads(line) for line in (mucgec / "per_sentence.jsonl").open(encoding="utf-8")]
    assert [{"n": s.n, "tp": s.tp, "fp": s.fp, "fn": s.fn} for s in result.sentences] == expected
    assert result.notes == []
    # scoring the written hypothesis M2 against ChERRANT's reference M2 gives the same result
    again = score(read_m2(hyp_out), read_m2(mucgec / "MuCGEC_dev.m2.char"))
    assert (again.tp, again.fp, again.fn, again.f05) == (1084, 1635, 3003, 0.3622)
