"""P-Tuning v2 (`method: ptuning`) on the native ChatGLM models: training lowers the loss on a
tiny ChatGLM2 and a tiny ChatGLM-6B; the folder is THUDM's layout and reloads (zhlora's Engine,
and the native model set up the way THUDM's code does) to identical logits; packed rows see the
prefix like single rows; an Engine / a server with a P-Tuning checkpoint and a LoRA adapter on
one base gives each its solo answer; merge and other families refuse with a message."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

import zhlora  # noqa: F401
from zhlora.errors import ConfigError, ZhloraError
from zhlora.models.chatglm.tiny import make_tiny_chatglm

ASSETS = Path(__file__).parent / "assets" / "chatglm"
DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "zh_instruct_sample.jsonl"
PRE = 8
needs_data = pytest.mark.skipif(not DATA.is_file(), reason="examples/data sample not present")


def learnable_chatglm(out: Path, version: str, seed: int = 1) -> Path:
    """A tiny random ChatGLM drawn at std 1/sqrt(fan_in) (embeddings 0.3) instead of 0.02, so its
    output depends on what attention reads and a trained prefix visibly moves the loss."""
    base = make_tiny_chatglm(out, version, tokenizer_dir=ASSETS / ("v1" if version == "chatglm" else "v2"),
                             seed=seed, hidden=64)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "embedding" in name else p.shape[1] ** -0.5))
    model.save_pretrained(base)
    return base


def train_ptuning(base: Path, out: Path, *extra: str):
    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    return train(load_config(None, [
        f"model={base}", f"data={DATA}", f"output_dir={out}", "method=ptuning", f"pre_seq_len={PRE}",
        "max_steps=30", "batch_size=4", "max_samples=4", "learning_rate=1e-1", "lr_scheduler=constant",
        "warmup_ratio=0", "cutoff_len=96", "save_steps=0", "report_to=none", "logging_steps=1", *extra]))


@pytest.fixture(scope="module", params=["chatglm2", "chatglm"])
def trained(request, tmp_path_factory):
    if not DATA.is_file():
        pytest.skip("examples/data sample not present")
    root = tmp_path_factory.mktemp(f"pt_{request.param}")
    base = learnable_chatglm(root / "base", request.param)
    return base, train_ptuning(base, root / "pt")


def _ids(model) -> torch.Tensor:
    spec = model.spec
    return torch.tensor([[10, 11, 12, 13, spec.gmask_token_id or 14, spec.bos_token_id or 15, 16, 17]])


def test_ptuning_training_lowers_the_loss(trained):
    _, res = trained
    losses = [h["loss"] for h in map(json.loads, (res.output / "train_log.jsonl").read_text().splitlines())
              if "loss" in h]
    assert len(losses) == 30
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0], losses  # one full batch of 4, the same every step


def test_ptuning_folder_is_thudm_layout_plus_self_description(trained):
    base, res = trained
    out = res.output
    cfg, base_cfg = json.loads((out / "config.json").read_text()), json.loads((base / "config.json").read_text())
    assert cfg["pre_seq_len"] == PRE and cfg["prefix_projection"] is False
    assert {k: v for k, v in cfg.items() if k not in ("pre_seq_len", "prefix_projection")} == \
        {k: v for k, v in base_cfg.items() if k not in ("pre_seq_len", "prefix_projection")}
    tensors = load_file(out / "model.safetensors")
    spec = AutoModelForCausalLM.from_pretrained(base).spec
    assert list(tensors) == ["transformer.prefix_encoder.embedding.weight"]
    emb = tensors["transformer.prefix_encoder.embedding.weight"]
    assert emb.dtype == torch.float32 and emb.shape == (PRE, spec.num_layers * 2 * spec.kv_groups * spec.head_dim)
    meta = json.loads((out / "zhlora_adapter.json").read_text())
    assert meta["method"] == "ptuning" and meta["ptuning"] == {"pre_seq_len": PRE, "prefix_projection": False}
    assert meta["template"] == ("chatglm" if spec.version == 1 else "chatglm2")
    assert meta["base_fingerprint"]["model_type"] == "chatglm" and meta["train_args"]["method"] == "ptuning"
    assert meta["metrics"]["steps"] == 30 and (out / "loss.png").is_file()
    assert not (out / "adapter_config.json").exists() and not list(out.glob("checkpoint-*"))


def test_ptuning_reloads_thudm_way_and_in_the_engine_to_identical_logits(trained):
    from zhlora.infer.engine import Engine

    base, res = trained
    config = AutoConfig.from_pretrained(base)  # THUDM's ptuning/main.py, evaluation path
    config.pre_seq_len, config.prefix_projection = PRE, False
    model = AutoModelForCausalLM.from_pretrained(base, config=config, dtype=torch.float32).eval()
    state = load_file(res.output / "model.safetensors")
    prefix = "transformer.prefix_encoder."
    model.transformer.prefix_encoder.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                                      if k.startswith(prefix)})
    ids = _ids(model)
    engine = Engine.load(None, adapters={"pt": res.output})  # base from the folder's metadata
    with torch.no_grad():
        trained_logits = res.model.eval()(ids).logits
        thudm = model(ids).logits
        with engine.using("pt") as m:
            ours = m(ids).logits
        with engine.using(None) as m:
            plain = m(ids).logits
    assert torch.equal(thudm, trained_logits) and torch.equal(ours, trained_logits)
    assert (plain - ours).abs().max().item() > 1e-3  # the prefix is what changes the output


@pytest.mark.parametrize("version", ["chatglm3", "chatglm"])
def test_ptuning_prefix_projection_has_thudm_shapes(tmp_path, version):
    """ChatGLM2/3: embedding (P, kv) -> Linear(kv, hidden) -> Tanh -> Linear(hidden, kv);
    ChatGLM-6B: embedding (P, hidden) -> Linear(hidden, hidden) -> Tanh -> Linear(hidden, kv)."""
    if not DATA.is_file():
        pytest.skip("examples/data sample not present")
    base = make_tiny_chatglm(tmp_path / "base", version, tokenizer_dir=ASSETS / ("v1" if version == "chatglm"
                                                                                else "v2"))
    res = train_ptuning(base, tmp_path / "pt", "prefix_projection=true", "max_steps=2")
    spec = AutoModelForCausalLM.from_pretrained(base).spec
    h, kv = spec.hidden_size, spec.num_layers * 2 * spec.kv_groups * spec.head_dim
    width = h if version == "chatglm" else kv
    shapes = {k.removeprefix("transformer.prefix_encoder."): tuple(v.shape)
              for k, v in load_file(res.output / "model.safetensors").items()}
    assert shapes == {"embedding.weight": (PRE, width), "trans.0.weight": (h, width), "trans.0.bias": (h,),
                      "trans.2.weight": (kv, h), "trans.2.bias": (kv,)}
    assert json.loads((res.output / "config.json").read_text())["prefix_projection"] is True


def test_ptuning_packed_rows_see_the_prefix_like_single_rows(tmp_path):
    from zhlora.models.chatglm.ptuning import new_prefix_encoder, trunk
    from zhlora.train.dataset import Collator

    base = make_tiny_chatglm(tmp_path / "base", "chatglm2", tokenizer_dir=ASSETS / "v2")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    torch.manual_seed(0)
    trunk(model).prefix_encoder = new_prefix_encoder(model, PRE, False).eval()
    a, b = list(range(20, 25)), list(range(40, 47))
    batch = Collator(pad_token_id=0, packed=True)([{"input_ids": a + b, "labels": a + b, "lengths": [5, 7]}])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits[0]
        one, two = model(torch.tensor([a])).logits[0], model(torch.tensor([b])).logits[0]
    assert (packed[:5] - one).abs().max().item() < 1e-5
    assert (packed[5:] - two).abs().max().item() < 1e-5


@pytest.fixture(scope="module")
def side_by_side(trained, tmp_path_factory):
    """(base, P-Tuning folder, LoRA adapter folder) on the ChatGLM2 base."""
    from zhlora.train.lora import make_tiny_adapter

    base, res = trained
    if AutoModelForCausalLM.from_pretrained(base).spec.version != 2:
        pytest.skip("side-by-side serving is checked on the ChatGLM2 base")
    lora = make_tiny_adapter(base, tmp_path_factory.mktemp("lora") / "lora", targets=("query_key_value",),
                             template="chatglm2")
    return base, res.output, lora


def test_ptuning_and_lora_in_one_engine_give_their_solo_answers(side_by_side):
    from test_infer_fixtures import PROMPTS, convs

    from zhlora.infer.engine import Engine, GenerationOptions

    base, pt, lora = side_by_side
    opts = GenerationOptions(max_new_tokens=8, ignore_eos=True)
    both = Engine.load(base, adapters={"pt": pt, "lora": lora})
    solo = {"pt": Engine.load(base, adapters={"pt": pt}), "lora": Engine.load(base, adapters={"lora": lora}),
            None: Engine.load(base)}
    answers = {}
    for name in ["pt", "lora", None, "pt"]:  # switching back and forth
        answers[name] = both.generate(convs(PROMPTS[:2]), name, opts, batch_size=2)
        assert answers[name] == solo[name].generate(convs(PROMPTS[:2]), name, opts, batch_size=2)
    assert len({tuple(a) for a in answers.values()}) == 3  # three different models


def test_ptuning_and_lora_served_side_by_side(side_by_side, tmp_path):
    import httpx
    from test_infer_fixtures import PROMPTS, convs, free_port, subprocess_env, wait_ready, zhlora_cmd

    from zhlora.infer.engine import Engine, GenerationOptions

    base, pt, lora = side_by_side
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as f:
        proc = subprocess.Popen(zhlora_cmd("serve", "--model", base, "--adapter", f"pt={pt}", "--adapter",
                                           f"lora={lora}", "--port", port), stdout=f, stderr=subprocess.STDOUT,
                                env=subprocess_env())
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/health", log)
        for name in ("pt", "lora"):
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120, json={
                "model": f"base:{name}", "messages": [{"role": "user", "content": PROMPTS[0]}],
                "max_tokens": 8, "temperature": 0})
            want = Engine.load(base, adapters={name: {"pt": pt, "lora": lora}[name]}).generate(
                convs(PROMPTS[:1]), name, GenerationOptions(max_new_tokens=8))[0]
            assert r.json()["choices"][0]["message"]["content"] == want
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_ptuning_merge_is_refused_with_what_to_do(trained, tmp_path):
    from zhlora.merge.merge import merge_adapters

    base, res = trained
    with pytest.raises(ZhloraError, match=r"P-Tuning v2 checkpoint cannot be merged.*not a delta.*plug-in"):
        merge_adapters(base, [res.output], tmp_path / "merged")


@needs_data
def test_ptuning_other_families_are_refused(tiny_llama, tmp_path):
    with pytest.raises(ZhloraError, match=r"method=ptuning: the llama family.*Use method=lora"):
        train_ptuning(tiny_llama, tmp_path / "pt", "max_steps=1")


@pytest.mark.parametrize("override,match", [("method=prefix", "`method` must be lora or ptuning"),
                                            ("pre_seq_len=0", "`pre_seq_len` must be >= 1")])
def test_ptuning_recipe_values_are_checked(override, match):
    from zhlora.train.config import load_config

    with pytest.raises(ConfigError, match=match):
        load_config(None, ["model=m", "data=d", "method=ptuning", override])


def test_ptuning_predict_cli_takes_the_checkpoint_as_adapter(side_by_side, tmp_path):
    from test_infer_fixtures import PROMPTS, convs

    from zhlora.cli import main
    from zhlora.infer.engine import Engine

    _, pt, _ = side_by_side
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"instruction": p}, ensure_ascii=False) + "\n" for p in PROMPTS[:2]),
                   encoding="utf-8")
    assert main(["predict", "--adapter", str(pt), "--input", str(src), "--output", str(tmp_path / "out.jsonl"),
                 "--max-new-tokens", "6"]) == 0
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    engine = Engine.load(None, adapters={"pt": pt})
    want = engine.generate(convs(PROMPTS[:2]), "pt", engine.default_options("pt").replace(max_new_tokens=6))
    assert [g["output"] for g in got] == want


@needs_data
def test_ptuning_resume_continues_from_a_prefix_only_checkpoint(tmp_path):
    from test_train_e2e import StopAt

    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    base = make_tiny_chatglm(tmp_path / "base", "chatglm2", tokenizer_dir=ASSETS / "v2")
    common = [f"model={base}", f"data={DATA}", "method=ptuning", f"pre_seq_len={PRE}", "max_steps=6",
              "save_steps=2", "batch_size=2", "max_samples=8", "learning_rate=2e-2", "cutoff_len=64",
              "report_to=none", "logging_steps=1"]
    full = train(load_config(None, common + [f"output_dir={tmp_path / 'full'}"]))
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, common + [f"output_dir={out}"]), callbacks=[StopAt(3).cb])
    ckpt = tmp_path / "resumed.partial" / "checkpoint-2"
    assert list(load_file(ckpt / "model.safetensors")) == ["transformer.prefix_encoder.embedding.weight"]
    train(load_config(None, common + [f"output_dir={out}", "resume=true"]))
    key = "transformer.prefix_encoder.embedding.weight"
    want, got = load_file(full.output / "model.safetensors")[key], load_file(out / "model.safetensors")[key]
    assert (want - got).abs().max().item() < 1e-5
