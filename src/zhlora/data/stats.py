"""Numbers `zhlora data check` prints: turns per conversation and token lengths."""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field

from zhlora.conversation import Conversation
from zhlora.templates import IGNORE_INDEX


def turns(conv: Conversation) -> int:
    """Rounds in a conversation: the number of user messages."""
    return sum(m.role == "user" for m in conv.messages)


def turn_histogram(convs: list[Conversation]) -> dict[int, int]:
    """{turns: conversations}, sorted by turns."""
    return dict(sorted(Counter(map(turns, convs)).items()))


@dataclass
class TokenStats:
    cutoff_len: int
    lengths: list[int] = field(default_factory=list)   # full tokens per record (no cutoff)
    truncated: list[str] = field(default_factory=list)  # origins of records longer than cutoff
    untrained: list[str] = field(default_factory=list)  # origins left with no trained token
    trained_tokens: int = 0                             # label tokens after cutoff
    lost_label_tokens: int = 0                          # label tokens the cutoff removes

    def summary(self) -> str:
        s = sorted(self.lengths)
        p95 = s[min(len(s) - 1, int(0.95 * len(s)))]
        return (f"min {s[0]}  median {statistics.median(s):g}  mean {statistics.fmean(s):.1f}  "
                f"p95 {p95}  max {s[-1]}  total {sum(s)}")


def token_stats(convs: list[Conversation], tokenizer, template, cutoff_len: int,
                train_on: str = "all", progress: bool | None = None) -> TokenStats:
    """Encode every conversation with `template` (a ChatTemplate) and count tokens."""
    from tqdm import tqdm

    stats = TokenStats(cutoff_len)
    disable = None if progress is None else not progress  # None: hidden when not a TTY
    for conv in tqdm(convs, desc="tokenizing", unit="rec", disable=disable, leave=False):
        enc = template.encode(conv, tokenizer, cutoff_len=None, train_on=train_on)
        stats.lengths.append(len(enc))
        if len(enc) > cutoff_len:
            stats.truncated.append(conv.origin)
            full_labels = sum(t != IGNORE_INDEX for t in enc.labels)
            enc = template.encode(conv, tokenizer, cutoff_len=cutoff_len, train_on=train_on)
            stats.lost_label_tokens += full_labels - sum(t != IGNORE_INDEX for t in enc.labels)
        trained = sum(t != IGNORE_INDEX for t in enc.labels)
        stats.trained_tokens += trained
        if trained == 0:
            stats.untrained.append(conv.origin)
    return stats


def length_histogram(lengths: list[int]) -> list[tuple[int, int, int]]:
    """Power-of-two buckets (lo, hi, count) with lo <= length <= hi, from the shortest
    record's bucket to the longest's (empty buckets in between are kept)."""
    def bucket(n: int) -> int:  # smallest k with n <= 2**k (k >= 4: first bucket is 1..16)
        return max(4, (max(n, 1) - 1).bit_length())

    counts = Counter(map(bucket, lengths))
    lo_k, hi_k = min(counts), max(counts)
    return [(1 if k == 4 else 2 ** (k - 1) + 1, 2 ** k, counts.get(k, 0)) for k in range(lo_k, hi_k + 1)]


def bars(rows: list[tuple[str, int]], width: int = 40) -> list[str]:
    """Text histogram lines: label, count, a bar scaled to the largest count."""
    top = max((n for _, n in rows), default=0) or 1
    lw = max(len(label) for label, _ in rows)
    nw = len(str(top))
    return [f"{label:>{lw}}  {n:>{nw}}  {'#' * max(1 if n else 0, round(width * n / top))}"
            for label, n in rows]


def prompt_overhead(convs: list[Conversation], tokenizer, template, limit: int = 200) -> list[int]:
    """Tokens the template adds per record beyond the messages' own text (role markers, special
    tokens, a default system prompt), for the first `limit` records."""
    out = []
    for conv in convs[:limit]:
        texts = [m.content for m in conv.messages] + ([conv.system] if conv.system else [])
        own = sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts)
        out.append(len(template.encode(conv, tokenizer).input_ids) - own)
    return out


def overhead_line(overhead: list[int]) -> str:
    """'106 tokens per record (median; min 104, max 110)'."""
    s = sorted(overhead)
    return f"{statistics.median(s):g} tokens per record (median; min {s[0]}, max {s[-1]})"


def shown_example(ids: list[int], labels: list[int], tokenizer) -> str:
    """One encoded record as text, special tokens visible, trained spans in [[...]]."""
    out, start = [], 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or (labels[k] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            text = _decode_span(tokenizer, ids, start, k)
            out.append(f"[[{text}]]" if labels[start] != IGNORE_INDEX else text)
            start = k
    return "".join(out)


def _decode_span(tokenizer, ids: list[int], a: int, b: int) -> str:
    """Text of ids[a:b] as it appears in the whole decoding (a span decoded alone may lose the
    space a SentencePiece word-start mark stands for)."""
    dec = lambda n: tokenizer.decode(ids[:n], skip_special_tokens=False)  # noqa: E731
    whole_a = dec(a)
    whole_b = dec(b)
    return whole_b[len(whole_a):] if whole_b.startswith(whole_a) else tokenizer.decode(ids[a:b])


def padded_positions(lengths: list[int], cutoff_len: int, batch_size: int, seed: int = 42) -> dict:
    """Positions one epoch computes beyond the real tokens, per batching: `padded` (random
    batches of `batch_size` padded to their longest, packing=false, padding_free=false) and
    `packed` (rows of <= cutoff_len tokens, first-fit decreasing, batches padded to the longest
    row). padding_free=true batches (packed or not) compute none. -> {"real", "padded", "packed"}."""
    import random

    from zhlora.templates import Encoded
    from zhlora.train.dataset import pack_rows

    lens = [min(n, cutoff_len) for n in lengths]

    def padding(row_lens: list[int]) -> int:
        return sum(max(b) * len(b) - sum(b) for b in
                   (row_lens[i:i + batch_size] for i in range(0, len(row_lens), batch_size)))

    shuffled = lens[:]
    random.Random(seed).shuffle(shuffled)
    rows = pack_rows([Encoded([0] * n, [0] * n) for n in lens], cutoff_len)
    return {"real": sum(lens), "padded": padding(shuffled), "packed": padding([len(r.input_ids) for r in rows])}
