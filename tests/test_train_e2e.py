"""End to end LoRA SFT on a tiny random LLaMA (CPU): the CLI, plain-PEFT reload, resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zhlora.cli import main
from zhlora.train.config import load_config
from zhlora.train.sft import train

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "data" / "zh_instruct_sample.jsonl"
RECIPE = ROOT / "examples" / "tiny_llama_lora.yaml"


@pytest.fixture(scope="module")
def data64(tmp_path_factory) -> Path:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:64]
    assert len(lines) == 64
    p = tmp_path_factory.mktemp("data") / "train.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_cli_loss_drops_and_folder_describes_itself(tiny_llama, data64, tmp_path, capsys):
    out = tmp_path / "adapter"
    rc = main(["train", str(RECIPE), f"model={tiny_llama}", f"data={data64}", f"output_dir={out}",
               "max_steps=30", "save_steps=10", "logging_steps=5", "packing=false", "eval_ratio=0.125",
               "learning_rate=1e-2"])
    assert rc == 0
    curve = losses(out)
    assert [s for s, _ in curve] == [5, 10, 15, 20, 25, 30]
    # a random base with LoRA only: about 1 nat in 30 steps (measured 6.66 -> 5.73)
    assert curve[-1][1] < curve[0][1] - 0.5, curve
    assert min(l for _, l in curve[3:]) < min(l for _, l in curve[:3]), curve
    for f in ("adapter_config.json", "adapter_model.safetensors", "zhlora_adapter.json", "loss.png"):
        assert (out / f).is_file(), f
    assert list((out / "runs").rglob("events.out.tfevents*")), "no TensorBoard log"
    assert not list(out.glob("checkpoint-*")) and not out.with_name("adapter.partial").exists()
    meta = json.loads((out / "zhlora_adapter.json").read_text())
    assert meta["template"] == "alpaca" and meta["family"] == "llama"
    assert meta["base_model"] == str(Path(tiny_llama).resolve())
    assert meta["base_fingerprint"]["vocab_size"] > 0
    assert meta["train_args"]["max_steps"] == 30 and meta["data_summary"]["records"] == 64
    assert meta["data_summary"]["eval_samples"] == 8 and "eval_loss" in meta["metrics"]
    assert "format alpaca" in capsys.readouterr().out
    # a second run refuses to overwrite
    assert main(["train", str(RECIPE), f"model={tiny_llama}", f"data={data64}", f"output_dir={out}"]) == 2
    assert "already exists" in capsys.readouterr().err


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapter_reloads_with_plain_peft(tiny_llama, data64, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = load_config(str(RECIPE), [f"model={tiny_llama}", f"data={data64}",
                                    f"output_dir={tmp_path / 'a'}", "max_steps=8", "save_steps=0",
                                    "packing=true", "eval_ratio=0", "report_to=none"])
    res = train(cfg)
    ids = torch.tensor([[1, 50, 60, 70, 80, 90, 100]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, str(res.output))
    trained = _logits(res.model, ids)
    assert torch.equal(trained, _logits(plain, ids))
    with plain.disable_adapter():  # the adapter really changes the model
        assert (trained - _logits(plain, ids)).abs().max() > 1e-4


class StopAt:
    """A callback that interrupts training after `step` (like Ctrl-C)."""

    def __init__(self, step):
        from transformers import TrainerCallback

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == step:
                    raise KeyboardInterrupt

        self.cb = _CB()


def test_resume_reproduces_uninterrupted_run(tiny_llama, data64, tmp_path):
    common = [f"model={tiny_llama}", f"data={data64}", "max_steps=12", "save_steps=4",
              "logging_steps=2", "eval_ratio=0", "report_to=none", "lora_dropout=0.1",
              "batch_size=4"]
    full = train(load_config(str(RECIPE), common + [f"output_dir={tmp_path / 'full'}"]))
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(load_config(str(RECIPE), common + [f"output_dir={out}"]), callbacks=[StopAt(6).cb])
    assert not out.exists() and (tmp_path / "resumed.partial" / "checkpoint-4").is_dir()
    with pytest.raises(Exception, match="resume=true"):
        train(load_config(str(RECIPE), common + [f"output_dir={out}"]))
    train(load_config(str(RECIPE), common + [f"output_dir={out}", "resume=true"]))
    want = dict(losses(full.output))
    got = dict(losses(out))
    assert set(got) == set(want) == {2, 4, 6, 8, 10, 12}  # 2, 4 restored from checkpoint-4
    for step in (6, 8, 10, 12):
        assert got[step] == pytest.approx(want[step], abs=1e-5), (step, got, want)


def test_extended_vocabulary_trains_embeddings_whole(tmp_path, data64):
    """Chinese-LLaMA style: tokenizer larger than the base embedding."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from zhlora.models.loading import load_tokenizer
    from zhlora.models.tiny import make_tiny_model

    text = data64.read_text(encoding="utf-8")
    full_tok = make_tiny_model(tmp_path / "probe", "llama", texts=[text])
    n = len(load_tokenizer(full_tok))
    base = make_tiny_model(tmp_path / "base", "llama", texts=[text], vocab_size=n - 20)
    cfg = load_config(None, [f"model={base}", f"data={data64}", f"output_dir={tmp_path / 'a'}",
                             "max_steps=3", "save_steps=0", "report_to=none", "template=alpaca"])
    res = train(cfg)
    meta = json.loads((res.output / "zhlora_adapter.json").read_text())
    assert meta["resized_vocab"] == {"from": n - 20, "to": n}
    assert (res.output / "tokenizer.json").is_file()
    cfg_saved = json.loads((res.output / "adapter_config.json").read_text())
    assert set(cfg_saved["modules_to_save"]) >= {"embed_tokens", "lm_head"}
    plain_base = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    plain_base.resize_token_embeddings(n)
    plain = PeftModel.from_pretrained(plain_base, str(res.output))
    ids = torch.tensor([[1, n - 5, n - 3, 40]])  # includes new tokens
    assert torch.equal(_logits(res.model, ids), _logits(plain, ids))


def test_bad_data_stops_before_training(tiny_llama, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "你好", "output": "世界"}\n{"instruction": "坏"\n'
                   '{"instruction": "空", "output": ""}\n', encoding="utf-8")
    args = ["train", str(RECIPE), f"model={tiny_llama}", f"data={bad}", f"output_dir={tmp_path / 'o'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and f"{bad}:3:" in err and "skip_bad" in err
    assert not (tmp_path / "o").exists()
    assert main(args + ["skip_bad=true", "max_steps=2", "report_to=none"]) == 0
    assert "skipped 2" in capsys.readouterr().out


def test_a_plain_run_prints_no_noise_a_user_cannot_act_on(tiny_llama, data64, tmp_path):
    """DeepSpeed's accelerator notice (it is installed, though not asked for), PEFT's
    gradient-checkpointing FutureWarning and a data-reading bar stuck at 0% stay out."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    run = subprocess.run([sys.executable, "-m", "zhlora", "train", str(RECIPE), f"model={tiny_llama}",
                          f"data={data64}", f"output_dir={tmp_path / 'o'}", "max_steps=1", "report_to=none",
                          "gradient_checkpointing=true"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    text = run.stdout + run.stderr
    assert "done:" in text
    for noise in ("Setting accelerator to CPU", "is_gradient_checkpointing", "gradient_checkpointing_enable",
                  f"reading {data64.name}"):
        assert noise not in text, noise
    # merge + verify load the adapter through PEFT, which reads the deprecated checkpointing name
    merged = tmp_path / "merged"
    for cmd in (["merge", "--base", str(tiny_llama), "--adapter", str(tmp_path / "o"), "--output", str(merged)],
                ["verify", "--base", str(tiny_llama), "--adapter", str(tmp_path / "o"), "--merged", str(merged)]):
        run = subprocess.run([sys.executable, "-m", "zhlora", *cmd], capture_output=True, text=True, env=env,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "FutureWarning" not in run.stdout + run.stderr, cmd
