"""pycorrector 1.1.4's SIGHAN-2015 sentence-level metric: all 20 reference cases."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from zhlora.errors import ZhloraError
from zhlora.gec.sighan import (SIGHAN2015_TEST, format_sighan, load_sighan_tsv, parse_sighan_tsv,
                               sighan_metric)

ASSETS = Path(__file__).parent / "assets" / "gec"
CASES = [json.loads(line) for line in (ASSETS / "sighan_metric_cases.jsonl").open(encoding="utf-8")]
SIGHAN_SHA256 = "e68e4b26ff58a3dc403d1377c2aeb3d48dd0c1036d1453948fb18dfb0452073e"


def _inputs(case: dict, tmp_path: Path) -> tuple[Path, list]:
    if "tsv_file" in case:  # s20: the real test set, bundled with zhlora
        preds = (ASSETS / case["preds_file"]).read_text(encoding="utf-8").split("\n")[:707]
        return SIGHAN2015_TEST, preds
    tsv = tmp_path / "cases.tsv"
    tsv.write_bytes(case["tsv"].encode("utf-8"))
    preds = case["preds"]
    if case["correct_fn_returns"] == "dict":
        preds = [{"target": p, "errors": []} for p in preds]
    return tsv, preds


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_gec_sighan_reference_cases(case, tmp_path):
    tsv, preds = _inputs(case, tmp_path)
    if "crash" in case["expected"]:
        with pytest.raises(ZhloraError, match="no sentence pairs"):
            sighan_metric(tsv, preds)
        return
    if "parsed_srcs_passed_to_correct_fn" in case:
        assert [s for s, _ in load_sighan_tsv(tsv)] == case["parsed_srcs_passed_to_correct_fn"]
    got = sighan_metric(tsv, preds)
    for key in ("acc", "precision", "recall", "f1"):
        assert got[key] == case["expected"][key], key
        assert type(got[key]) is type(case["expected"][key]), key  # f1 is the int 0 when P+R=0
    assert format_sighan(got) == case["expected_printed"]
    assert got["tp"] + got["fp"] + got["fn"] + got["tn"] == got["total"] == len(preds)


def test_gec_sighan_readme_counts_and_bundled_file():
    assert hashlib.sha256(SIGHAN2015_TEST.read_bytes()).hexdigest() == SIGHAN_SHA256
    pairs = load_sighan_tsv()
    assert len(pairs) == 707 and sum(s != t for s, t in pairs) == 373
    preds = (ASSETS / "sighan2015_synthetic_preds.txt").read_text(encoding="utf-8").split("\n")[:707]
    got = sighan_metric(None, preds)
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (281, 22, 92, 312)


def test_gec_sighan_pairs_input_and_errors():
    pairs = [("他再家", "他在家"), ("你好", "你好"), ("高心", "高兴")]
    got = sighan_metric(pairs, ["他在家", "你好。", "高心"])
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (1, 1, 1, 0)
    assert got["precision"] == 0.5 and got["recall"] == 0.5 and got["acc"] == 1 / 3
    with pytest.raises(ZhloraError, match="2 predictions for 3"):
        sighan_metric(pairs, ["a", "b"])
    with pytest.raises(ZhloraError, match="prediction 2 is a int"):
        sighan_metric(pairs, ["a", 3, "c"])
    with pytest.raises(ZhloraError, match="no sentence pairs in the given pairs"):
        sighan_metric([], [])


def test_gec_sighan_parse_rules():
    text = "  a\tb  \r\n# c\td\r\nx\t\ny\tz\tw\n\u3000p\tq\u3000\n"
    assert parse_sighan_tsv(text) == [("a", "b"), ("p", "q")]
