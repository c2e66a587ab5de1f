"""`zhlora gec score|sighan` on the reference data with numbers from the original tools, the
`gec` help, and the GEC recipes loading as training configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from zhlora.cli import main as zmain

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "examples" / "gec").glob("*.yaml"))


def _row(out: str, header: str) -> list[str]:
    lines = out.splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.startswith(header))
    return [c.strip() for c in lines[i + 2].strip("| ").split("|")]


def test_score_para_matches_cherrant(shared_dir, tmp_path, capsys):
    d = shared_dir / "cgec" / "cases_corpus"
    m2 = tmp_path / "hyp.m2"
    assert zmain(["gec", "score", "--hyp", str(d / "hyp.para"), "--ref", str(d / "ref.para"),
                  "--m2-out", str(m2)]) == 0
    assert _row(capsys.readouterr().out, "| TP") == ["21", "9", "15", "0.7000", "0.5833", "0.6731"]
    assert m2.read_text(encoding="utf-8").strip() == (d / "hyp.m2.char").read_text(encoding="utf-8").strip()


def test_score_m2_matches_cherrant(shared_dir, capsys):
    d = shared_dir / "cgec" / "chERRANT_samples"
    assert zmain(["gec", "score", "--format", "m2", "--hyp", str(d / "demo.hyp.m2.char"),
                  "--ref", str(d / "demo.ref.m2.char")]) == 0
    assert _row(capsys.readouterr().out, "| TP") == ["8", "19", "35", "0.2963", "0.1860", "0.2649"]


def test_sighan_matches_pycorrector_readme(shared_dir, capsys):
    d = shared_dir / "cgec"
    assert zmain(["gec", "sighan", "--pred", str(d / "sighan2015_synthetic_preds.txt"),
                  "--gold", str(d / "sighan2015_test.tsv")]) == 0
    out = capsys.readouterr().out
    assert _row(out, "| acc") == ["0.8388", "0.9274", "0.7534", "0.8314", "281", "22", "92", "312", "707"]
    assert "acc:0.8388, precision:0.9274, recall:0.7534, f1:0.8314" in out


def test_sighan_and_score_errors(shared_dir, tmp_path, capsys):
    pred = tmp_path / "p.txt"
    pred.write_text("一\n二\n", encoding="utf-8")
    assert zmain(["gec", "sighan", "--pred", str(pred), "--gold",
                  str(shared_dir / "cgec" / "sighan2015_test.tsv")]) == 2
    err = capsys.readouterr().err
    assert "2 prediction line(s) for 707 sentence pairs" in err and "Traceback" not in err
    bad = tmp_path / "h.para"
    bad.write_text("no tab here\n", encoding="utf-8")
    assert zmain(["gec", "score", "--hyp", str(bad), "--ref", str(bad)]) == 2
    assert f"{bad}:1: expected id<TAB>source<TAB>target" in capsys.readouterr().err


def test_gec_help_lists_every_subcommand(capsys):
    assert zmain(["gec"]) == 1
    out = capsys.readouterr().out
    for name in ("synth", "convert", "score", "sighan", "eval"):
        assert name in out


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipes_load_as_training_configs(recipe):
    from zhlora.train.config import load_config

    text = recipe.read_text(encoding="utf-8")
    assert text.startswith("# ") and "Launch" in text and "zhlora train examples/gec/" in text
    cfg = load_config(str(recipe))
    cfg.validate()
    assert cfg.format == "alpaca" and cfg.template and 1 <= cfg.lora_r <= 64
    if recipe.name == "tiny_cpu.yaml":
        assert Path(cfg.data[0]).is_file() and cfg.dtype == "float32"
        assert (Path(cfg.model) / "model.safetensors").is_file()  # the embedded base
    else:
        assert "download" in text and cfg.dtype == "bfloat16"
        assert 1e-4 <= cfg.learning_rate <= 3e-4 and 2 <= cfg.epochs <= 3


def test_recipe_count():
    assert {p.name for p in RECIPES} == {"chatglm3_6b_lora.yaml", "chatglm3_6b_qlora.yaml",
                                         "qwen2_5_7b_instruct_lora.yaml",
                                         "chinese_alpaca_2_7b_lora.yaml", "tiny_cpu.yaml"}
