"""Pooled KV caches in capacity buckets: the storage of the decoding step (decoding.py).

A sequence's cache lives in one slot of the bucket for its length: the capacity is
`bucket_cap(length)`, a function of the sequence's own length only (never of the other
sequences in the batch), so the padded length its attention runs over is its own. Each bucket
holds, per layer, one tensor (slots, Hkv, cap, D) for the keys and one for the values, so the
decoding rows of one bucket append their new keys and values with one indexed write and attend
in one call over the bucket's slots. A sequence that outgrows its capacity moves to the next
bucket (one copy); a finished sequence frees its slot (`SeqCache.release`, also run when the
cache is garbage collected). A bucket's tensors grow by doubling and are dropped when its last
slot is freed. A new slot is zeroed, so what sits past a sequence's length is its own or zero.
"""
from __future__ import annotations

import bisect
import threading
import weakref

import torch

MIN_CAP = 16


def bucket_cap(n: int) -> int:
    """Capacity of a cache for `n` tokens: 16, 32, 48, 64, 96, 128, 192, 256, ... (powers of two
    and, from 48 on, 1.5 times a power of two: at most a third of the slot is padding)."""
    if n <= MIN_CAP:
        return MIN_CAP
    p = 1 << (n - 1).bit_length()           # the smallest power of two >= n
    return p * 3 // 4 if p >= 64 and n <= p * 3 // 4 else p


class Bucket:
    """The caches of capacity `cap`: per layer k and v (slots, Hkv, cap, D); slots [0, used)
    are handed out (`owner`: slot -> its cache's home [bucket, slot]) or free (`free`, sorted)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.free: list[int] = []
        self.owner: dict[int, list] = {}
        self.used = 0

    def alloc(self, home: list) -> int:
        """A free slot (the lowest) for `home`, zeroed in the layers that exist."""
        slot = self.free.pop(0) if self.free else self.used
        self.used = max(self.used, slot + 1)
        for t in (*self.k.values(), *self.v.values()):
            if slot < t.shape[0]:
                t[slot].zero_()
        self.owner[slot] = home
        return slot

    def compact(self) -> None:
        """Move the caches of the highest slots down into the free ones (one copy each), so
        that slots [0, used) are all handed out and an attention call over them wastes none."""
        while self.free:
            hole, top = self.free.pop(0), self.used - 1   # trailing slots are never free
            for t in (*self.k.values(), *self.v.values()):
                t[hole] = t[top]
            home = self.owner.pop(top)
            home[1], self.owner[hole] = hole, home
            self.used -= 1
            self._trim()

    def release(self, slot: int) -> None:
        del self.owner[slot]
        bisect.insort(self.free, slot)
        self._trim()

    def _trim(self) -> None:
        while self.free and self.free[-1] == self.used - 1:   # trailing free slots: not used
            self.free.pop()
            self.used -= 1
        if not self.used:
            self.k, self.v = {}, {}

    def layer(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's (k, v) buffers, each (>= used, Hkv, cap, D), made (zeros, like `like`
        (1 or more, Hkv, ..., D)) or doubled as needed."""
        k = self.k.get(layer)
        if k is None or k.shape[0] < self.used:
            size = max(4, 1 << (self.used - 1).bit_length())
            for store in (self.k, self.v):
                grown = like.new_zeros(size, like.shape[1], self.cap, like.shape[-1])
                if layer in store:
                    grown[:store[layer].shape[0]] = store[layer]
                store[layer] = grown
        return self.k[layer], self.v[layer]


class KVPool:
    """Every sequence's cache of one model, by capacity."""

    def __init__(self):
        self.buckets: dict[int, Bucket] = {}
        self.lock = threading.Lock()   # a cache may be released from another thread (GC)

    def bucket(self, cap: int) -> Bucket:
        return self.buckets.setdefault(cap, Bucket(cap))

    def slots_in_use(self) -> int:
        """Slots handed out and not freed, all buckets together."""
        return sum(b.used - len(b.free) for b in self.buckets.values())


def _free(pool: KVPool, home: list) -> None:
    """Give back the slot of `home` = [bucket, slot] (no-op when it has none)."""
    bucket, slot = home
    if bucket is not None:
        with pool.lock:
            bucket.release(slot)
        home[:] = [None, None]


class SeqCache:
    """Where one sequence's keys and values live: `filled` tokens in a slot of the bucket for
    its length (none until its first step)."""

    def __init__(self):
        self.pool: KVPool | None = None
        self.home = [None, None]    # [Bucket, slot]
        self.filled = 0

    @property
    def bucket(self) -> Bucket | None:
        return self.home[0]

    @property
    def slot(self) -> int | None:
        return self.home[1]

    def reserve(self, pool: KVPool, n: int) -> int:
        """Make room for `n` more tokens (moving to a larger bucket if needed) -> the position
        of the first; they count as filled from now on."""
        pos, cap = self.filled, bucket_cap(self.filled + n)
        if self.pool is None:
            self.pool = pool
            weakref.finalize(self, _free, pool, self.home)
        if self.bucket is None or self.bucket.cap != cap:
            self._move(pool.bucket(cap))
        self.filled = pos + n
        return pos

    def _move(self, new: Bucket) -> None:
        with self.pool.lock:
            slot = new.alloc(self.home)
        old, old_slot = self.home
        if old is not None:
            for layer, k in old.k.items():   # the tokens so far, every layer, one copy
                nk, nv = new.layer(layer, k)
                nk[slot, :, :self.filled] = k[old_slot, :, :self.filled]
                nv[slot, :, :self.filled] = old.v[layer][old_slot, :, :self.filled]
            with self.pool.lock:
                old.release(old_slot)
        self.home[:] = [new, slot]

    def release(self) -> None:
        """Free the slot (the sequence is done, or starts over): the cache is empty again."""
        if self.pool is not None:
            _free(self.pool, self.home)
        self.filled = 0
