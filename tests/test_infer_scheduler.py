"""The scheduler: mixed adapters in one continuous batch give every request exactly its solo
greedy answer; slots, cancellation, seeded sampling; adapters loaded and unloaded (LRU)."""
from __future__ import annotations

import threading

import pytest
import torch
from test_infer_fixtures import PROMPTS, convs, engine, infer_setup, make_adapter  # noqa: F401

from zhlora.errors import ZhloraError
from zhlora.infer.decoding import ROW_QUANTUM, RowsBackend, padded_layout
from zhlora.infer.engine import Engine, GenerationOptions
from zhlora.infer.scheduler import Sequence

ADAPTERS = [None, "gec", "poem", "a3", "a4"]


@pytest.fixture(scope="module")
def engine4(infer_setup, tmp_path_factory):
    base, adapters = infer_setup
    root = tmp_path_factory.mktemp("more_adapters")
    more = {"a3": make_adapter(base, root / "a3", seed=3), "a4": make_adapter(base, root / "a4", seed=4)}
    return Engine.load(base, adapters={**adapters, **more}, max_batch=32)


def _jobs(eng):
    """24 requests: 4 adapters + base, mixed prompt and output lengths, stop tokens on or off,
    every third with a stop string taken from its own solo answer, every other one streamed."""
    jobs = []
    for i in range(24):
        a, p = ADAPTERS[i % 5], PROMPTS[i % 4] * (1 + i % 3)
        opts = GenerationOptions(max_new_tokens=(6, 11, 17, 24)[i % 4], ignore_eos=i % 4 != 3)
        jobs.append((a, eng.encode(convs([p])[0], a, opts.max_new_tokens), opts, i % 2 == 0))
    for i in range(0, 24, 3):
        a, prompt, opts, stream = jobs[i]
        full = eng.complete([prompt], a, opts, batch_size=1)[0].text
        if len(full) > 4:
            jobs[i] = (a, prompt, opts.replace(stop=[full[2:4]]), stream)
    return jobs


def _run(eng, job):
    a, prompt, opts, stream = job
    if not stream:
        c = eng.complete([prompt], a, opts, batch_size=1)[0]
        return c.text, c.completion_tokens, c.finish_reason
    s = eng.open_stream(prompt, a, opts)
    text = "".join(s)
    return text, s.completion.completion_tokens, s.completion.finish_reason


def test_infer_mixed_batch_equals_solo(engine4):
    assert isinstance(engine4.scheduler.backend(), RowsBackend)  # the batched path, not the fallback
    jobs = _jobs(engine4)
    solo = [_run(engine4, j) for j in jobs]  # one at a time: nothing else in the batch
    assert len({s[0] for s in solo}) > 12 and any(s[2] == "stop" for s in solo[::3])
    mixed_before = engine4.scheduler.mixed_steps
    engine4.scheduler.widest = 0
    got: dict[int, tuple] = {}
    start = threading.Barrier(len(jobs))

    def client(i):
        start.wait()
        got[i] = _run(engine4, jobs[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert [got[i] for i in range(len(jobs))] == solo
    assert engine4.scheduler.widest >= 8 and engine4.scheduler.mixed_steps > mixed_before


def test_infer_padded_layout():
    rows = padded_layout(["x", None, "x", "y", None, "x"])
    assert [r for r in rows if r[0] is not None] == [(0, "x"), (2, "x"), (5, "x"), (1, None), (4, None), (3, "y")]
    for name in ("x", None, "y"):
        assert sum(a == name for _, a in rows) % ROW_QUANTUM == 0


def test_infer_max_batch_caps_and_seeded_sampling(engine4):
    opts = GenerationOptions(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=11, ignore_eos=True)
    prompt = engine4.encode(convs()[0], "gec", 8)
    alone = engine4.complete([prompt], "gec", opts)[0].text
    sched = engine4.scheduler
    sched.max_batch, sched.widest = 3, 0
    try:
        others = [engine4.encode(convs([p])[0], a, 8) for p, a in zip(PROMPTS, ADAPTERS)]
        futs = [engine4.submit(p, a, GenerationOptions(max_new_tokens=8, ignore_eos=True))
                for p, a in zip(others, ADAPTERS)]
        together = engine4.complete([prompt], "gec", opts)[0].text
        [f.future.result(timeout=300) for f in futs]
    finally:
        sched.max_batch = 32
    assert together == alone
    assert 1 <= sched.widest <= 3


def test_infer_cancel_frees_slot(engine4):
    s = engine4.open_stream(engine4.encode(convs()[0], "a3", 400), "a3",
                            GenerationOptions(max_new_tokens=400, ignore_eos=True))
    it = iter(s)
    next(it)
    it.close()
    assert s.cancel.is_set()
    c = engine4.complete([engine4.encode(convs()[1], None, 5)], None, GenerationOptions(max_new_tokens=5))[0]
    assert c.finish_reason in ("stop", "length") and engine4.scheduler.running == 0


@pytest.fixture()
def lru_engine(infer_setup):
    base, adapters = infer_setup
    return Engine.load(base, adapters={"gec": adapters["gec"]}, max_loras=1)


def test_infer_load_adapter_lru_and_refusals(lru_engine, engine, infer_setup, tmp_path):
    from zhlora.models.tiny import make_tiny_model

    base, adapters = infer_setup
    opts = GenerationOptions(max_new_tokens=12, ignore_eos=True)
    want = {a: engine.generate(convs(), a, opts) for a in ("gec", "poem")}
    lru_engine.load_adapter("poem", adapters["poem"])
    assert lru_engine.adapter_names == ["gec", "poem"] and list(lru_engine.adapters.resident) == ["poem"]
    for a in ("gec", "poem", "gec"):
        assert lru_engine.generate(convs(), a, opts) == want[a]
        assert list(lru_engine.adapters.resident) == [a]  # --max-loras 1: the other one left
    other = make_tiny_model(tmp_path / "other", "llama", texts=PROMPTS, hidden=32)
    wrong = make_adapter(other, tmp_path / "wrong", seed=5)
    (wrong / "zhlora_adapter.json").unlink()  # a plain PEFT adapter: only its shapes tell
    bad = [("poem", adapters["poem"], "already loaded"), ("x", tmp_path / "nope", "does not exist"),
           ("base", adapters["poem"], "reserved"), ("wrong", wrong, "does not fit the base model")]
    for name, path, msg in bad:
        with pytest.raises(ZhloraError, match=msg):
            lru_engine.load_adapter(name, path)
    assert lru_engine.adapter_names == ["gec", "poem"]
    assert set(lru_engine.model.peft_config) <= {"gec", "poem"}
    assert lru_engine.generate(convs(), "poem", opts) == want["poem"]


def test_infer_unload_waits_for_running_requests(infer_setup):
    lru_engine = Engine.load(infer_setup[0], adapters={"gec": infer_setup[1]["gec"]})
    lru_engine.load_adapter("poem", infer_setup[1]["poem"])
    opts = GenerationOptions(max_new_tokens=60, ignore_eos=True)
    s = lru_engine.open_stream(lru_engine.encode(convs()[0], "poem", 60), "poem", opts)
    pieces = iter(s)
    next(pieces)                                  # running now
    lru_engine.unload_adapter("poem")             # returns once the stream has ended
    "".join(pieces)
    assert s.completion is not None and (s.completion.finish_reason, s.completion.completion_tokens) == ("length", 60)
    assert lru_engine.adapter_names == ["gec"] and set(lru_engine.model.peft_config) == {"gec"}
    with pytest.raises(ZhloraError, match="unknown adapter 'poem'"):
        lru_engine.generate(convs()[:1], "poem", opts)


def test_infer_chatglm_steps_alone_like_generate(tmp_path):
    """zhlora's ChatGLM port is outside transformers' attention interface: each sequence
    steps alone (SoloBackend) and gives what transformers' generate gives."""

    from zhlora.infer.decoding import SoloBackend
    from zhlora.models.chatglm.tiny import make_tiny_chatglm

    eng = Engine.load(make_tiny_chatglm(tmp_path / "glm2", "chatglm2"))
    assert isinstance(eng.scheduler.backend(), SoloBackend)
    opts = GenerationOptions(max_new_tokens=8, ignore_eos=True)
    prompts = [eng.encode(c, None, 8) for c in convs(PROMPTS[:2])]
    got = [c.completion_tokens for c in eng.complete(prompts, None, opts)]
    texts = [c.text for c in eng.complete(prompts, None, opts)]
    for ids, text in zip(prompts, texts):
        with eng.using(None) as model:
            out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=8, do_sample=False, eos_token_id=None)
        assert text == eng.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    assert got == [8, 8]


def test_infer_prompts_prefilled_together_equal_solo(engine4):
    """Requests queued at one token boundary are prefilled in ONE forward pass (prompts of
    different lengths and adapters side by side), and every greedy answer still equals, token
    for token, the answer of that request run alone."""
    from zhlora.infer.metrics import ServeMetrics

    sched = engine4.scheduler
    jobs = []
    for i, a in enumerate(ADAPTERS + ["gec", None, "a3"]):
        prompt = engine4.encode(convs([PROMPTS[i % 4] * (1 + i % 3)])[0], a, 9)[: 9 + 5 * i]
        jobs.append((prompt, a, GenerationOptions(max_new_tokens=5 + i, ignore_eos=True)))
    assert len({len(p) % 4 for p, _, _ in jobs}) >= 3   # spans that do not start on a block
    solo = []
    for p, a, o in jobs:
        seq = engine4.submit(p, a, o)
        seq.future.result(timeout=300)
        solo.append(seq.generated)
    sched.metrics = metrics = ServeMetrics(sched)
    forwards, prefilled = sched.prefill_forwards, sched.prefilled
    try:
        with engine4.lock:  # the scheduler waits at the boundary: all of them queue up
            seqs = [engine4.submit(p, a, o) for p, a, o in jobs]
        [s.future.result(timeout=300) for s in seqs]
    finally:
        sched.metrics = None
    assert (sched.prefill_forwards - forwards, sched.prefilled - prefilled) == (1, len(jobs))
    assert [s.generated for s in seqs] == solo and len({tuple(g) for g in solo}) > 4
    text = metrics.render()[0].decode()
    assert "zhlora_prefill_forwards_total 1.0" in text and f"zhlora_prefill_prompts_total {len(jobs)}.0" in text
    # the numbers themselves: a prompt's logits are the same bits together or alone
    with engine4.lock, torch.inference_mode():
        fresh = [Sequence(p, a, o, None) for p, a, o in jobs]
        together = sched.backend().prefill(fresh)
        alone = torch.cat([sched.backend().prefill([Sequence(p, a, o, None)]) for p, a, o in jobs])
    assert torch.equal(together, alone)


def test_infer_failed_prefill_fails_alone(engine4):
    """A prompt that breaks the shared prefill pass (a token id outside the vocabulary) fails
    alone; the prompts prefilled beside it are retried one by one and answer as usual."""
    opts = GenerationOptions(max_new_tokens=6, ignore_eos=True)
    good = [(engine4.encode(convs([p])[0], a, 6), a) for p, a in zip(PROMPTS, ("gec", None, "a3"))]
    want = [engine4.complete([p], a, opts)[0].text for p, a in good]
    bad = good[0][0][:-1] + [engine4.model.get_input_embeddings().num_embeddings + 5]
    sched = engine4.scheduler
    forwards, prefilled = sched.prefill_forwards, sched.prefilled
    with engine4.lock:
        seqs = [engine4.submit(p, a, opts) for p, a in [good[0], (bad, "poem"), *good[1:]]]
    with pytest.raises(IndexError):
        seqs[1].future.result(timeout=300)
    got = [s.future.result(timeout=300).text for s in (seqs[0], *seqs[2:])]
    # the shared pass (failed), then each of the 4 alone; 3 prefilled
    assert (sched.prefill_forwards - forwards, sched.prefilled - prefilled) == (5, 3)
    assert [engine4.template_for(a).answer_text(t) for t, (_, a) in zip(got, good)] == want
