"""Engine: batched left-padded generation == one-by-one; adapters change the answer; streaming."""
from __future__ import annotations

import threading

import pytest
from test_infer_fixtures import PROMPTS, convs, engine, infer_setup  # noqa: F401

from zhlora.errors import ZhloraError
from zhlora.infer.engine import Engine, GenerationOptions

GREEDY = GenerationOptions(max_new_tokens=12, ignore_eos=True)


def test_infer_batched_equals_one_by_one(engine):
    for adapter in (None, "gec"):
        batched = engine.generate(convs(), adapter, GREEDY, batch_size=4)
        single = [engine.generate([c], adapter, GREEDY, batch_size=1)[0] for c in convs()]
        assert batched == single
        assert all(len(t) > 0 for t in batched)


def test_infer_adapters_change_output(engine):
    outs = {a: engine.generate(convs(), a, GREEDY) for a in (None, "gec", "poem")}
    assert engine.adapter_names == ["gec", "poem"]
    assert outs[None] != outs["gec"] and outs["gec"] != outs["poem"] and outs[None] != outs["poem"]


def test_infer_stream_joins_to_generate(engine):
    conv = convs()[1]
    pieces = list(engine.stream(conv, "poem", GREEDY))
    assert len(pieces) > 1
    assert "".join(pieces) == engine.generate([conv], "poem", GREEDY)[0]


def test_infer_stop_string_cuts_answer(engine):
    full = engine.generate(convs()[:1], "gec", GREEDY)[0]
    stop = full[3:5]
    cut = engine.generate(convs()[:1], "gec", GenerationOptions(max_new_tokens=12, stop=[stop],
                                                               ignore_eos=True))[0]
    assert cut == full[:full.find(stop)]
    assert "".join(engine.stream(convs()[0], "gec", GenerationOptions(max_new_tokens=12, stop=[stop],
                                                                    ignore_eos=True))) == cut


def test_infer_stream_close_cancels(engine):
    cancel = threading.Event()
    it = engine.stream(convs()[0], "gec", GenerationOptions(max_new_tokens=400, ignore_eos=True), cancel=cancel)
    next(it)
    it.close()
    assert cancel.is_set()
    # the lock is free again: a new generation runs
    assert engine.generate(convs()[:1], None, GREEDY)


def test_infer_sampling_seed_reproducible(engine):
    opts = GenerationOptions(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    assert engine.generate(convs()[:2], "gec", opts) == engine.generate(convs()[:2], "gec", opts)


def test_infer_errors(engine, infer_setup, tmp_path):
    with pytest.raises(ZhloraError, match="unknown adapter 'nope'"):
        engine.generate(convs()[:1], "nope")
    with pytest.raises(ZhloraError, match="top_p"):
        engine.generate(convs()[:1], None, GenerationOptions(top_p=0))
    with pytest.raises(ZhloraError, match="not a PEFT adapter"):
        Engine.load(infer_setup[0], adapters={"x": tmp_path})


def test_infer_base_from_adapter_meta(infer_setup):
    base, adapters = infer_setup
    eng = Engine.load(None, adapters={"gec": adapters["gec"]})
    assert eng.base_dir == base
    assert eng.template_for("gec").name == "alpaca"
