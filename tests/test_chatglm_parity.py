"""Parity with THUDM's original ChatGLM code (../shared/parity/chatglm*/: tiny checkpoints and the
tensors the original produced). Every folder holding checkpoint/ + expected.safetensors is
checked the same way, so other sizes and seeds drop in. Loaded only through
AutoModelForCausalLM (no remote code: the folders' auto_map points at files that are absent)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DynamicCache

import zhlora  # noqa: F401  (registers the native ChatGLM classes)

TOL = 1e-5
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "parity"
CASES = sorted(p.name for p in SHARED.glob("chatglm*") if (p / "expected.safetensors").is_file()
               and (p / "checkpoint" / "config.json").is_file()) if SHARED.is_dir() else []


@pytest.fixture(scope="module", params=CASES)
def case(request):
    folder = SHARED / request.param
    model = AutoModelForCausalLM.from_pretrained(folder / "checkpoint", dtype=torch.float32).eval()
    return request.param, model, load_file(folder / "expected.safetensors")


def _is_v1(model) -> bool:
    return model.spec.version == 1


def test_chatglm_parity_loads_without_remote_code(case):
    name, model, _ = case
    assert not any((SHARED / name / "checkpoint").glob("*.py"))
    assert type(model).__name__ == ("ChatGLM6BForConditionalGeneration" if _is_v1(model)
                                    else "ChatGLM2ForConditionalGeneration")
    if _is_v1(model):  # the checkpoint has no lm_head.weight: it must be tied
        assert model.lm_head.weight.data_ptr() == model.transformer.word_embeddings.weight.data_ptr()


def test_chatglm_parity_full_forward_logits(case):
    name, model, e = case
    kwargs, keep = {}, torch.ones(e["input_ids"].shape, dtype=torch.bool)
    if "attention_mask" in e:  # v2/v3: left-padded row; compare real tokens only
        kwargs = {"attention_mask": e["attention_mask"], "position_ids": e["position_ids"]}
        keep = e["attention_mask"].bool()
    with torch.no_grad():
        out = model(e["input_ids"], **kwargs)
        hidden = model.transformer(e["input_ids"][:1], **{k: v[:1] for k, v in kwargs.items()})
    diff = (out.logits - e["logits"])[keep].abs().max().item()
    assert diff < TOL, f"{name}: logits differ by {diff}"
    hdiff = (hidden.last_hidden_state[0] - e["last_hidden_state_row0"]).abs().max().item()
    assert hdiff < TOL, f"{name}: last hidden state differs by {hdiff}"


def test_chatglm_parity_greedy_generate(case):
    name, model, e = case
    for i in range(e["greedy_ids"].shape[0]):
        p, n = int(e["greedy_prompt_lengths"][i]), int(e["greedy_lengths"][i])
        out = model.generate(e["greedy_ids"][i:i + 1, :p], do_sample=False, max_new_tokens=8)
        assert out[0].tolist() == e["greedy_ids"][i, :n].tolist(), f"{name} row {i}"


def test_chatglm_parity_prefill_and_cached_steps(case):
    name, model, e = case
    p = e["prefill_logits_row0"].shape[0]
    ids = e["greedy_ids"][:1, :p]  # row 0's prompt
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        inputs = model.prepare_inputs_for_generation(ids, cache=cache, use_cache=True,
                                                     position_ids=torch.arange(p)[None])
        out = model(**inputs)
        assert (out.logits[0] - e["prefill_logits_row0"]).abs().max().item() < TOL
        for j, tok in enumerate(e["step_input_ids"].tolist()):
            ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
            inputs = model.prepare_inputs_for_generation(ids, cache=out.cache, use_cache=True,
                                                         next_sequence_length=1,
                                                         position_ids=torch.arange(ids.shape[1])[None])
            assert inputs["position_ids"].flatten().tolist() == e["step_position_ids"][j].flatten().tolist()
            out = model(**inputs)
            diff = (out.logits[0, -1] - e["step_logits"][j]).abs().max().item()
            assert diff < TOL, f"{name}: step {j} logits differ by {diff}"
