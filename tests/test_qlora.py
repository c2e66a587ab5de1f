"""QLoRA on the CPU: bitsandbytes >= 0.48 quantizes to NF4 / int8, runs the forward and
generation, and trains LoRA on top. Everything here runs on a CPU; a CUDA build of bitsandbytes
on a GPU is the GPU check's business.

Measured (the embedded tiny-zh base, 4-bit, 16 steps of 4 samples, lr 2e-3): loss 6.43 -> 5.22.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from zhlora.cli import main
from zhlora.models.embedded import EMBEDDED_BASE_DIR
from zhlora.train.config import load_config
from zhlora.train.sft import train

pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install 'zhlora[qlora]')")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "zh_instruct_sample.jsonl"
CHATGLM_TOK = Path(__file__).parent / "assets" / "chatglm" / "v2"
IDS = torch.tensor([[1, 50, 60, 70, 80, 90, 100, 110]])


def recipe(base, out, *extra):
    return load_config(None, [f"model={base}", f"data={DATA}", f"output_dir={out}", "max_samples=64",
                              "batch_size=4", "cutoff_len=128", "save_steps=0", "logging_steps=4",
                              "report_to=none", "lora_dropout=0", "eval_ratio=0", *extra])


def losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def logits(model, ids=IDS):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids.to(next(model.parameters()).device)).logits


def linear_kinds(model) -> set[str]:
    return {type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__}


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qlora") / "adapter"
    return train(recipe(EMBEDDED_BASE_DIR, out, "quantization=4bit", "max_steps=16", "learning_rate=2e-3"))


def test_4bit_lora_training_lowers_the_loss_and_the_folder_says_how(qlora_run):
    curve = losses(qlora_run.output)
    assert len(curve) == 4 and curve[-1] < curve[0] - 0.5, curve  # measured 6.43 -> 5.22
    assert "Linear4bit" in linear_kinds(qlora_run.model)
    meta = json.loads((qlora_run.output / "zhlora_adapter.json").read_text())
    assert meta["quantization"] == {"method": "bitsandbytes", "bits": 4, "quant_type": "nf4",
                                    "double_quant": True, "compute_dtype": "float32",
                                    "bitsandbytes_version": meta["quantization"]["bitsandbytes_version"]}
    assert meta["train_args"]["quantization"] == "4bit"


def test_the_adapter_on_a_fresh_4bit_base_gives_the_logits_in_memory(qlora_run):
    from zhlora.infer.engine import Engine

    trained = logits(qlora_run.model)
    engine = Engine.load(adapters={"q": str(qlora_run.output)}, quantization="4bit")
    assert "Linear4bit" in linear_kinds(engine.model)
    assert torch.equal(trained, logits(engine.model))
    # the 4-bit forward is not the full-precision one: the same adapter there differs
    full = Engine.load(adapters={"q": str(qlora_run.output)})
    assert (logits(full.model) - trained).abs().max() > 1e-3


def test_predict_generates_with_a_4bit_base(qlora_run, tmp_path, capsys):
    inp = tmp_path / "in.txt"
    inp.write_text("你好\n今天天气很好\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--adapter", str(qlora_run.output), "--quantization", "4bit", "--input", str(inp),
                 "--output", str(out), "--max-new-tokens", "6", "--batch-size", "2"]) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 and all(isinstance(r["output"], str) for r in rows)


def test_merge_of_a_qlora_adapter_says_what_the_merged_model_is(qlora_run, tmp_path, capsys):
    merged = tmp_path / "merged"
    assert main(["merge", "--base", str(EMBEDDED_BASE_DIR), "--adapter", str(qlora_run.output), "--output",
                 str(merged), "--dtype", "float32", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "trained on a 4-bit nf4 base (QLoRA)" in out and "not the quantized forward" in out
    # the merged model is base + adapter in full precision, as PEFT computes it
    assert main(["verify", "--base", str(EMBEDDED_BASE_DIR), "--adapter", str(qlora_run.output),
                 "--merged", str(merged)]) == 0


def test_a_quantized_folder_is_refused_as_merge_base(qlora_run, tmp_path, capsys):
    from zhlora.models.loading import load_model

    q = tmp_path / "base-4bit"
    load_model(EMBEDDED_BASE_DIR, quantization="4bit").save_pretrained(q)
    assert main(["merge", "--base", str(q), "--adapter", str(qlora_run.output), "--output",
                 str(tmp_path / "m"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "quantized" in err and "full-precision" in err and "Traceback" not in err


def test_8bit_trains_and_reloads_on_the_cpu(tmp_path):
    from zhlora.infer.engine import Engine

    res = train(recipe(EMBEDDED_BASE_DIR, tmp_path / "a8", "quantization=8bit", "max_steps=6",
                       "learning_rate=2e-3", "max_samples=32", "logging_steps=2"))
    assert "Linear8bitLt" in linear_kinds(res.model)
    curve = losses(res.output)
    assert curve[-1] < curve[0], curve
    assert json.loads((res.output / "zhlora_adapter.json").read_text())["quantization"]["bits"] == 8
    engine = Engine.load(adapters={"a": str(res.output)}, quantization="8bit")
    assert torch.allclose(logits(res.model), logits(engine.model), atol=1e-5)


def test_native_chatglm2_quantizes_and_trains(tmp_path):
    from zhlora.models.chatglm.tiny import make_tiny_chatglm

    base = make_tiny_chatglm(tmp_path / "glm", "chatglm2", hidden=64, tokenizer_dir=CHATGLM_TOK, seed=1)
    res = train(recipe(base, tmp_path / "a", "quantization=4bit", "max_steps=8", "learning_rate=2e-2",
                       "max_samples=32", "cutoff_len=96"))
    qkv = res.model.base_model.model.transformer.encoder.layers[0].self_attention.query_key_value
    assert type(qkv.base_layer).__name__ == "Linear4bit" and "lora_A" in dict(qkv.named_children())
    assert type(res.model.base_model.model.transformer.output_layer).__name__ == "Linear"  # the head stays
    curve = losses(res.output)
    assert curve[-1] < curve[0], curve
    cfg = json.loads((res.output / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["query_key_value"]


def test_quantization_without_bitsandbytes_names_the_extra(tiny_llama, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    assert main(["train", f"model={tiny_llama}", f"data={DATA}", f"output_dir={tmp_path / 'r'}",
                 "quantization=4bit"]) == 2
    assert "pip install 'zhlora[qlora]'" in capsys.readouterr().err
    assert main(["chat", "--model", str(tiny_llama), "--quantization", "4bit"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'zhlora[qlora]'" in err and "Traceback" not in err


def test_an_unknown_quantization_is_a_message(tiny_llama, tmp_path, capsys):
    assert main(["train", f"model={tiny_llama}", f"data={DATA}", f"output_dir={tmp_path / 'r'}",
                 "quantization=3bit"]) == 2
    assert "`quantization` must be one of none, 4bit, 8bit, got '3bit'" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU (bitsandbytes' CUDA kernels, bf16/fp16 compute); the CPU runs of "
                    "the same path are the tests above, the GPU check runs this one")
def test_4bit_training_and_reload_on_the_gpu(tmp_path):
    from zhlora.infer.engine import Engine
    from zhlora.models.device import decide

    dev, dtype = decide("auto", "auto")
    res = train(recipe(EMBEDDED_BASE_DIR, tmp_path / "g", "quantization=4bit", "max_steps=16",
                       "learning_rate=2e-3"))
    curve = losses(res.output)
    assert curve[-1] < curve[0] - 0.5, curve
    meta = json.loads((res.output / "zhlora_adapter.json").read_text())
    assert meta["quantization"]["compute_dtype"] == str(dtype).removeprefix("torch.")
    assert next(res.model.parameters()).device.type == "cuda"
    engine = Engine.load(adapters={"q": str(res.output)}, quantization="4bit")
    assert engine.device == dev
    # after PEFT's k-bit preparation the trained model keeps norms and head in fp32, the fresh
    # one computes them in bf16/fp16: equal up to half-precision rounding
    trained, fresh = logits(res.model).float(), logits(engine.model).float()
    assert (trained - fresh).abs().max() <= 4e-2 * max(1.0, float(trained.abs().max()))
