"""Recipes load into the typed config; overrides and errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from zhlora.errors import ConfigError
from zhlora.train.config import TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "examples").rglob("*.yaml"))


def test_there_are_recipes():
    assert RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_loads(path):
    cfg = load_config(str(path))
    assert isinstance(cfg, TrainConfig) and cfg.model and cfg.data
    cfg.validate()


def test_overrides_are_typed():
    cfg = load_config(str(ROOT / "examples/tiny_llama_lora.yaml"),
                      ["max_steps=50", "learning_rate=3e-4", "packing=false", "lora_target=q_proj,v_proj",
                       "data=[a.jsonl, b.json]"])
    assert cfg.max_steps == 50 and cfg.learning_rate == 3e-4 and cfg.packing is False
    assert cfg.lora_target == ["q_proj", "v_proj"] and cfg.data == ["a.jsonl", "b.json"]


def test_unknown_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match="did you mean learning_rate"):
        load_config(None, ["learnig_rate=1"])
    bad = tmp_path / "r.yaml"
    bad.write_text("model: m\ndata: d\nlora_rank: 8\n")
    with pytest.raises(ConfigError, match=f"{bad}: unknown key 'lora_rank'.*lora_r"):
        load_config(str(bad))


def test_bad_values_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="`batch_size` must be an integer"):
        load_config(None, ["batch_size=two"])
    with pytest.raises(ConfigError, match="`packing` must be true or false"):
        load_config(None, ["packing=maybe"])
    bad = tmp_path / "r.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"r.yaml:\d+: invalid YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="`model` is required"):
        load_config(None, ["data=x"]).validate()
