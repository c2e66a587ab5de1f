"""The pooled KV caches of the decoding step: capacity buckets from a sequence's own length,
slots handed out, moved, compacted and freed; decoding rows of one bucket attend in one call
and every row's logits are the same bits batched or alone (GQA and not), and match the model's
own full-sequence forward."""
from __future__ import annotations

import gc

import pytest
import torch
from test_infer_fixtures import PROMPTS, convs, engine, infer_setup, make_adapter  # noqa: F401

from zhlora.infer.engine import Engine, GenerationOptions
from zhlora.infer.kvpool import Bucket, KVPool, SeqCache, bucket_cap
from zhlora.infer.scheduler import Sequence

OPTS = GenerationOptions(max_new_tokens=64, ignore_eos=True)


def test_infer_bucket_cap_from_own_length():
    assert [bucket_cap(n) for n in (1, 16, 17, 32, 33, 48, 49, 64, 65, 96, 97, 129, 193)] == \
        [16, 16, 32, 32, 48, 48, 64, 64, 96, 96, 128, 192, 256]
    caps = [bucket_cap(n) for n in range(1, 2000)]
    assert all(c >= n for n, c in enumerate(caps, 1)) and caps == sorted(caps)
    assert all(c % 16 == 0 and c <= 1.5 * n + 16 for n, c in enumerate(caps, 1))


def test_infer_bucket_slots_compact_and_free():
    b, like = Bucket(16), torch.zeros(1, 2, 1, 4)
    homes = [[b, None] for _ in range(3)]
    for h in homes:
        h[1] = b.alloc(h)
    k, v = b.layer(0, like)
    assert [h[1] for h in homes] == [0, 1, 2] and k.shape == (4, 2, 16, 4)
    k[2], v[2] = 7.0, 8.0
    b.release(0)
    assert (b.used, b.free) == (3, [0])
    b.compact()                                   # slot 2's cache moves down into slot 0
    assert (b.used, b.free, homes[2][1]) == (2, [], 0) and b.owner == {0: homes[2], 1: homes[1]}
    assert bool((b.k[0][0] == 7).all() and (b.v[0][0] == 8).all())
    h = [b, None]
    h[1] = b.alloc(h)
    assert h[1] == 2 and bool((b.k[0][2] == 0).all())   # a new slot is zeroed
    for slot in (0, 1, 2):
        b.release(slot)
    assert (b.used, b.free, b.k) == (0, [], {})          # last slot gone: tensors dropped


def test_infer_seq_cache_freed_when_collected():
    pool = KVPool()
    cache = SeqCache()
    cache.reserve(pool, 20)
    assert cache.bucket.cap == 32 and pool.slots_in_use() == 1
    del cache
    gc.collect()
    assert pool.slots_in_use() == 0


def _decode_all(backend, seqs, steps):
    """Prefill `seqs` together, then `steps` greedy steps together -> logits per step
    [(len(seqs), V)] and the capacities each sequence's cache went through."""
    logits, caps = [backend.prefill(seqs)], [set() for _ in seqs]
    for _ in range(steps):
        for s, row, c in zip(seqs, logits[-1], caps):
            s.generated.append(int(row.argmax()))
            c.add(s.cache.bucket.cap)
        logits.append(backend.decode(seqs))
    return logits, caps


def _batched_vs_solo(eng, jobs, steps):
    """Every job's logits at every step, batched with all the others and alone: bit-equal."""
    backend = eng.scheduler.backend()
    with eng.lock, torch.inference_mode():
        seqs = [Sequence(p, a, OPTS, None) for p, a in jobs]
        together, caps = _decode_all(backend, seqs, steps)
        assert backend.pool.slots_in_use() == len(jobs)
        idle = []
        for i, (p, a) in enumerate(jobs):   # the batched ones still hold slots: some calls
            alone, _ = _decode_all(backend, [Sequence(p, a, OPTS, None)], steps)   # have idle slots
            for t, (x, y) in enumerate(zip(together, alone)):
                assert torch.equal(x[i], y[0]), (i, t)
            idle.append(seqs[i].cache.bucket.used)
        for s in seqs:
            s.cache.release()
        gc.collect()
        assert backend.pool.slots_in_use() == 0
    return seqs, caps, idle, together[-1]


def test_infer_pooled_decode_batched_equals_solo_gqa(engine):
    cfg = engine.model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads      # grouped-query attention
    base = engine.encode(convs([PROMPTS[2] * 3])[0])
    jobs = [(base[:n], a) for n, a in zip((3, 12, 15, 30, 45, 60), (None, "gec", "poem", "gec", None, "poem"))]
    _, caps, idle, _ = _batched_vs_solo(engine, jobs, steps=8)
    assert set().union(*caps) == {16, 32, 48, 64, 96} and sum(len(c) > 1 for c in caps) == 5   # crossed
    assert max(idle) > 1


@pytest.fixture(scope="module")
def mha_engine(tmp_path_factory):
    """A tiny LLaMA without GQA (4 heads, 4 key/value heads) and one adapter."""
    from zhlora.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("mha")
    base = make_tiny_model(root / "base", "llama", texts=PROMPTS, heads=4, kv_heads=4, seed=3)
    return Engine.load(base, adapters={"x": make_adapter(base, root / "x", seed=5)})


def test_infer_pooled_decode_batched_equals_solo_and_model(mha_engine):
    eng = mha_engine
    base = eng.encode(convs([PROMPTS[1] * 4])[0])
    jobs = [(base[:n], a) for n, a in zip((5, 14, 30, 46), (None, "x", None, "x"))]
    seqs, caps, _, last = _batched_vs_solo(eng, jobs, steps=4)
    assert set().union(*caps) == {16, 32, 48, 64}
    for seq, (_, a), got in zip(seqs, jobs, last):   # the pooled step is the model's own attention
        with eng.using(a) as model:
            want = model(input_ids=torch.tensor([seq.prompt + seq.generated]), use_cache=False).logits[0, -1]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_infer_no_slots_left_after_requests_finish_or_cancel(engine):
    eng = engine
    futs = [eng.submit(eng.encode(convs([p * (1 + i % 3)])[0], a, 20), a,
                       GenerationOptions(max_new_tokens=5 + 3 * i, ignore_eos=True))
            for i, (p, a) in enumerate(zip(PROMPTS * 2, (None, "gec", "poem") * 3))]
    s = eng.open_stream(eng.encode(convs()[0], "gec", 300), "gec", GenerationOptions(max_new_tokens=300, ignore_eos=True))
    it = iter(s)
    next(it)
    it.close()                                   # the client goes away mid-answer
    [f.future.result(timeout=300) for f in futs]
    eng.complete([eng.encode(convs()[1], None, 4)], None, GenerationOptions(max_new_tokens=4))
    with eng.lock:
        assert eng.scheduler.running == 0 and eng.scheduler.backend().pool.slots_in_use() == 0


def test_infer_no_slots_left_after_failed_prefill(engine):
    """A prompt that breaks the shared prefill pass (a token id outside the vocabulary): the
    slots the failed pass took are given back, the retried prompts' too once they finish."""
    eng, opts = engine, GenerationOptions(max_new_tokens=3, ignore_eos=True)
    good = eng.encode(convs()[1], "gec", 3)
    bad = good[:-1] + [eng.model.get_input_embeddings().num_embeddings + 5]
    with eng.lock:
        seqs = [eng.submit(p, "gec", opts) for p in (good, bad, good)]
    with pytest.raises(IndexError):
        seqs[1].future.result(timeout=300)
    [s.future.result(timeout=300) for s in (seqs[0], seqs[2])]
    with eng.lock:
        assert eng.scheduler.running == 0 and eng.scheduler.backend().pool.slots_in_use() == 0


def test_infer_rows_reach_their_own_adapter(engine):
    """Base, gec and poem rows in one forward get their own adapter's logits (route_rows' hook
    on the LoRA layers), not the active adapter's: checked against PEFT with each one set."""
    eng = engine
    prompt = eng.encode(convs([PROMPTS[0]])[0])
    seqs = [Sequence(prompt, a, OPTS, None) for a in (None, "gec", "poem", "gec")]
    with torch.inference_mode():
        got = eng.scheduler.backend().prefill(seqs)
    for seq in seqs:
        seq.cache.release()
    for seq, logits in zip(seqs, got):
        with eng.using(seq.adapter) as model:
            want = model(input_ids=torch.tensor([prompt]), use_cache=False).logits[0, -1]
        torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got[0], got[1]) and not torch.allclose(got[1], got[2])   # they differ
