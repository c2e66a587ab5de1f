"""Synthetic GEC pairs: every error type does what it says, seeds reproduce bytes, the
confusion sets come from pycorrector's files (without importing it) or from pypinyin."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zhlora.cli import main as zmain
from zhlora.errors import ZhloraError
from zhlora.gec.confusion import (from_pypinyin, is_han, load_confusion, pycorrector_data_dir,
                                  read_same_pinyin, read_same_stroke)
from zhlora.gec.prompt import GEC_INSTRUCTION
from zhlora.gec.synth import ERROR_TYPES, SynthConfig, parse_mix, read_sentences, synthesize

DATA = Path(__file__).parent / "assets" / "gec_data"
CLEAN = DATA / "clean.txt"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus():
    return read_sentences(CLEAN)


@pytest.fixture(scope="module")
def confusion(corpus):
    return load_confusion("".join(corpus[0]))


def _subsequence(short: str, long: str) -> bool:
    it = iter(long)
    return all(c in it for c in short)


def _only(kind: str, corpus, confusion, seed: int = 1):
    cfg = SynthConfig(seed=seed, keep_ratio=0.0, error_rate=0.05, mix={kind: 1.0})
    pairs, stats = synthesize(corpus[0], cfg, confusion, corpus[1])
    changed = [p for p in pairs if p.source != p.target]
    assert len(changed) >= 20, f"{kind}: only {len(changed)} of {len(pairs)} sentences changed"
    assert stats.corrupted == len(changed) and stats.edits[kind] == sum(len(p.edits) for p in changed)
    return changed


def test_char_substitutions_come_from_the_confusion_sets(corpus, confusion):
    for kind, tables in (("char_pinyin", [confusion.same_tone, confusion.other_tone]),
                         ("char_glyph", [confusion.glyph or confusion.same_tone])):
        for p in _only(kind, corpus, confusion):
            assert len(p.source) == len(p.target)
            diffs = [(w, r) for w, r in zip(p.source, p.target) if w != r]
            assert 1 <= len(diffs) == len(p.edits)
            assert all(any(w in t.get(r, "") for t in tables) for w, r in diffs), (kind, p)


def test_frequent_substitution_picks_characters_the_text_uses(corpus, confusion):
    """substitute=frequent: wrong characters weighted by their count in the input (+1)."""
    from collections import Counter

    count = Counter(c for s in corpus[0] for c in s)
    mean = {}
    for how in ("uniform", "frequent"):
        wrong = []
        for seed in range(6):
            cfg = SynthConfig(seed=seed, keep_ratio=0.0, error_rate=0.1, mix={"char_pinyin": 1.0}, substitute=how)
            pairs, _ = synthesize(corpus[0], cfg, confusion, corpus[1])
            wrong += [w for p in pairs for w, r in zip(p.source, p.target) if w != r]
        assert len(wrong) > 200
        mean[how] = sum(count[w] for w in wrong) / len(wrong)
    assert mean["frequent"] > 2 * mean["uniform"], mean   # 0.33 vs 0.13 on this 31-line text
    with pytest.raises(ZhloraError, match="substitute 'often'"):
        SynthConfig(substitute="often").check()


def test_insertions_and_deletions(corpus, confusion):
    for p in _only("char_insert", corpus, confusion):
        assert len(p.source) == len(p.target) + len(p.edits) and _subsequence(p.target, p.source)
    for p in _only("char_delete", corpus, confusion):
        assert len(p.source) == len(p.target) - len(p.edits) and _subsequence(p.source, p.target)
    for p in _only("word_delete", corpus, confusion):
        assert len(p.source) < len(p.target) and _subsequence(p.source, p.target)
    for p in _only("word_duplicate", corpus, confusion):
        assert len(p.source) > len(p.target) and _subsequence(p.target, p.source)


def test_word_swap_substitute_and_punct(corpus, confusion):
    for p in _only("word_swap", corpus, confusion):
        assert sorted(p.source) == sorted(p.target)
    for p in _only("word_substitute", corpus, confusion):
        assert all(is_han(c) or c in "，。、；：！？" for c in p.source)
    strip = lambda s: "".join(c for c in s if c not in "，。、；：！？")  # noqa: E731
    for p in _only("punct", corpus, confusion):
        assert strip(p.source) == strip(p.target)


def test_keep_ratio_and_counts(corpus, confusion):
    pairs, stats = synthesize(corpus[0], SynthConfig(seed=7, keep_ratio=1.0), confusion)
    assert all(p.source == p.target for p in pairs) and stats.kept == 30 and stats.corrupted == 0
    pairs, stats = synthesize(corpus[0], SynthConfig(seed=7), confusion, corpus[1])
    assert stats.sentences == 30 == stats.kept + stats.corrupted + stats.uncorruptible
    assert 3 <= stats.kept <= 16  # ~30% of 30
    assert sum(p.source != p.target for p in pairs) == stats.corrupted
    assert sum(stats.edits.values()) == sum(len(p.edits) for p in pairs)
    assert [p.target for p in pairs] == corpus[0] and pairs[8].line == 10  # blank line 9 skipped
    assert all(len(p.edits) <= 4 for p in pairs)


def test_pycorrector_files_read_without_importing_it():
    d = pycorrector_data_dir()
    if d is None:
        pytest.skip("pycorrector is not installed")
    same, other = read_same_pinyin(d / "same_pinyin.txt")
    glyph = read_same_stroke(d / "same_stroke.txt")
    assert len(same) > 3000 and len(other) > 3000 and len(glyph) > 2000
    assert "地" in same["的"] + other["的"] and "的" not in same["的"]
    assert all(c not in cands for c, cands in list(glyph.items())[:500])
    assert "pycorrector" not in sys.modules  # its __init__ imports torch + transformers


def test_pypinyin_fallback():
    conf = from_pypinyin("公园圆元员原的地得他她它")
    assert conf.glyph == {} and "pypinyin over 12" in conf.source
    assert conf.same_tone["园"] == "".join(sorted("元原员圆"))  # yuan2, in sorted order
    assert set(conf.same_tone["他"]) == {"她", "它"} and "公" not in conf.same_tone
    # glyph errors fall back to homophones when there is no glyph table
    pairs, stats = synthesize(["他在公园的门口等她。"] * 8, SynthConfig(seed=0, keep_ratio=0,
                                                                     mix={"char_glyph": 1}), conf)
    assert stats.edits["char_glyph"] >= 6
    assert load_confusion("的地", prefer="pypinyin").source.startswith("pypinyin")


def test_mix_parsing_and_bad_config():
    assert parse_mix("char_pinyin=3, punct=1") == {"char_pinyin": 3.0, "punct": 1.0}
    with pytest.raises(ZhloraError, match="unknown error type.*typo.*known: char_pinyin"):
        parse_mix("typo=1")
    with pytest.raises(ZhloraError, match="NAME=WEIGHT"):
        parse_mix("char_pinyin")
    with pytest.raises(ZhloraError, match="keep ratio 1.5"):
        SynthConfig(keep_ratio=1.5).check()
    assert set(ERROR_TYPES) == set(SynthConfig().mix)


def _synth_in_subprocess(out: Path, hashseed: str) -> None:
    code = ("import sys; from zhlora.gec.synth import SynthConfig, run_synth; "
            "run_synth(sys.argv[1], sys.argv[2], SynthConfig(seed=5))")
    env = {**os.environ, "PYTHONHASHSEED": hashseed, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code, str(CLEAN), str(out)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_same_seed_same_bytes_across_hash_seeds(tmp_path):
    outs = []
    for i, hs in enumerate(("1", "2")):
        _synth_in_subprocess(tmp_path / f"p{i}.jsonl", hs)
        outs.append((tmp_path / f"p{i}.jsonl").read_bytes())
    assert outs[0] == outs[1]
    recs = [json.loads(x) for x in outs[0].decode().splitlines()]
    assert len(recs) == 30 and {r["instruction"] for r in recs} == {GEC_INSTRUCTION}
    assert sum(r["input"] != r["output"] for r in recs) >= 15


def test_cli_para_output_seed_changes_output_and_errors(tmp_path, capsys):
    a, b = tmp_path / "a.para", tmp_path / "b.para"
    assert zmain(["gec", "synth", "--input", str(CLEAN), "--output", str(a), "--format", "para",
                  "--seed", "1"]) == 0
    assert zmain(["gec", "synth", "--input", str(CLEAN), "--output", str(b), "--format", "para",
                  "--seed", "2"]) == 0
    assert a.read_text(encoding="utf-8") != b.read_text(encoding="utf-8")
    first = a.read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert first[0] == "1" and first[2] == "今天天气很好，我们一起去公园散步吧。"
    capsys.readouterr()
    assert zmain(["gec", "synth", "--input", str(CLEAN), "--output", str(a)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert zmain(["gec", "synth", "--input", str(CLEAN), "--output", str(a), "--overwrite",
                  "--seed", "1", "--format", "para"]) == 0
    out = capsys.readouterr().out
    assert "corrupted" in out and "edits:" in out and "confusion set:" in out
    assert zmain(["gec", "synth", "--input", str(CLEAN), "--output", str(tmp_path / "c"),
                  "--mix", "bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown error type(s) in the mix: bogus" in err and "Traceback" not in err
