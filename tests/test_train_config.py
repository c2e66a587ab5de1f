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


def test_types_come_from_the_annotations():
    cfg = load_config(None, ["model=m", "data=d.jsonl", "learning_rate=3e-4", "lora_alpha=32", "eval_steps=7",
                             "max_samples=null", "template=chatml"])
    assert cfg.learning_rate == 3e-4 and isinstance(cfg.lora_alpha, float) and cfg.eval_steps == 7
    assert cfg.max_samples is None and cfg.template == "chatml"
    for bad, msg in (("eval_steps=soon", "`eval_steps` must be an integer"), ("template=3", "`template` must be a string"),
                     ("use_rslora=1", "`use_rslora` must be true or false"), ("epochs=many", "`epochs` must be a number"),
                     ("data=[1, 2]", "`data` must be a path or a list of paths")):
        with pytest.raises(ConfigError, match=msg):
            load_config(None, ["model=m", "data=d.jsonl", bad])


def test_load_config_validates_the_whole_recipe():
    with pytest.raises(ConfigError, match="`lora_r` must be >= 1.*\n.*warmup_ratio"):
        load_config(None, ["model=m", "data=d.jsonl", "lora_r=0", "warmup_ratio=2"])


def test_lora_settings_are_one_typed_group():
    from zhlora.train.config import LoraSettings

    cfg = load_config(None, ["model=m", "data=d.jsonl", "lora_r=4", "lora_alpha=8", "lora_dropout=0",
                             "lora_target=all", "modules_to_save=embed_tokens,lm_head", "use_rslora=true"])
    assert cfg.lora == LoraSettings(r=4, alpha=8.0, dropout=0.0, target="all",
                                    modules_to_save=("embed_tokens", "lm_head"), use_rslora=True)


def test_peft_config_is_built_in_one_place(tiny_llama):
    """make_tiny_adapter and training build their LoraConfig through train.lora."""
    from transformers import AutoModelForCausalLM

    from zhlora.families import family_of
    from zhlora.train.lora import lora_config

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    cfg = load_config(None, [f"model={tiny_llama}", "data=d.jsonl", "lora_r=4", "lora_target=q_proj,v_proj",
                             "modules_to_save=lm_head"])
    lc = lora_config(family_of(tiny_llama), model, cfg.lora, ("embed_tokens", "lm_head"))
    assert lc.r == 4 and set(lc.target_modules) == {"q_proj", "v_proj"}
    assert lc.modules_to_save == ["lm_head", "embed_tokens"] and lc.task_type == "CAUSAL_LM"
    from zhlora.errors import ZhloraError

    with pytest.raises(ZhloraError, match="lora_target \\['nope'\\] not found"):
        lora_config(family_of(tiny_llama), model, load_config(None, ["model=m", "data=d", "lora_target=nope"]).lora)


def test_make_tiny_adapter_goes_through_the_one_builder(tiny_llama, tmp_path, monkeypatch):
    """The test/bench adapter maker builds its LoraConfig with train.lora.peft_config (the one
    place PEFT's API churn is absorbed), not a LoraConfig of its own."""
    import json

    from zhlora.train import lora

    seen = []
    real = lora.peft_config
    monkeypatch.setattr(lora, "peft_config", lambda *a, **k: seen.append(a) or real(*a, **k))
    out = lora.make_tiny_adapter(tiny_llama, tmp_path / "a", r=4, alpha=8)
    assert len(seen) == 1 and seen[0][0].r == 4
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["r"] == 4 and cfg["lora_alpha"] == 8


@pytest.mark.parametrize("ratio,warm", [(1.0, 6), (0.5, 3), (0.1, 1), (0.0, 0)])
def test_warmup_ratio_means_a_share_of_the_steps_for_every_value(tiny_llama, tmp_path, ratio, warm):
    """transformers 5 reads warmup_steps=1.0 as one step; warmup_ratio=1.0 must warm up all 6."""
    import json as _json

    from zhlora.train.sft import train

    data = tmp_path / "d.jsonl"
    data.write_text("".join(_json.dumps({"instruction": f"问题{i}", "output": "回答"}, ensure_ascii=False) + "\n"
                            for i in range(8)), encoding="utf-8")
    res = train(load_config(None, [f"model={tiny_llama}", f"data={data}", f"output_dir={tmp_path / 'o'}",
                                   "max_steps=6", "batch_size=2", f"warmup_ratio={ratio}", "lr_scheduler=linear",
                                   "logging_steps=1", "save_steps=0", "report_to=none", "learning_rate=1e-3"]))
    lrs = [r["learning_rate"] for r in map(_json.loads, (res.output / "train_log.jsonl").read_text().splitlines())
           if "learning_rate" in r]
    assert len(lrs) == 6
    rising = [b > a for a, b in zip(lrs, lrs[1:])]
    # during warmup the LR rises each step; after it, the linear schedule decays
    assert rising == [i < warm for i in range(5)], (ratio, lrs)
