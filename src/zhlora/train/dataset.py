"""Conversations -> token rows for the Trainer: encoding, packing, collation.

Packing concatenates samples into rows of at most `cutoff_len` tokens. Restarting
`position_ids` alone does NOT stop attention across samples in transformers' LLaMA/Qwen
(sdpa or eager); so each packed row also gets a 4D block-diagonal causal mask
`[B, 1, T, T]` (bool, True = may attend), passed as `attention_mask`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from zhlora.templates import IGNORE_INDEX, ChatTemplate, Encoded


@dataclass
class EncodeStats:
    samples: int = 0
    truncated: int = 0
    dropped_no_labels: int = 0
    label_tokens: int = 0
    tokens: int = 0
    lost_label_tokens: int = 0  # label tokens that truncation at cutoff_len removed


def encode_all(convs, template: ChatTemplate, tokenizer, cutoff_len: int, train_on: str = "all",
               progress: bool = True) -> tuple[list[Encoded], EncodeStats]:
    """Encode conversations; drop those left with no trained token after truncation."""
    from tqdm.auto import tqdm

    out, st = [], EncodeStats()
    for conv in tqdm(convs, desc="tokenizing", disable=not progress or len(convs) < 2000):
        enc = template.encode(conv, tokenizer, cutoff_len=cutoff_len, train_on=train_on)
        n_labels = sum(1 for x in enc.labels if x != IGNORE_INDEX)
        if enc.truncated or n_labels == 0:  # only these are encoded twice
            full = template.encode(conv, tokenizer, cutoff_len=None, train_on=train_on)
            st.lost_label_tokens += sum(1 for x in full.labels if x != IGNORE_INDEX) - n_labels
        if n_labels == 0:
            st.dropped_no_labels += 1
            continue
        st.samples += 1
        st.truncated += int(enc.truncated)
        st.label_tokens += n_labels
        st.tokens += len(enc)
        out.append(enc)
    return out, st


@dataclass
class Row:
    """One training row: one sample, or several packed samples (`lengths`)."""
    input_ids: list[int]
    labels: list[int]
    lengths: list[int]


def single_rows(encoded: list[Encoded]) -> list[Row]:
    return [Row(e.input_ids, e.labels, [len(e)]) for e in encoded]


def pack_rows(encoded: list[Encoded], cutoff_len: int) -> list[Row]:
    """First-fit-decreasing bin packing of samples into rows of <= cutoff_len tokens.

    Deterministic: ties keep the input order. Each sample stays whole.
    """
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    rows: list[Row] = []
    free: list[int] = []  # remaining space per row
    for i in order:
        e = encoded[i]
        n = len(e)
        for r, space in enumerate(free):
            if space >= n:
                rows[r].input_ids += e.input_ids
                rows[r].labels += e.labels
                rows[r].lengths.append(n)
                free[r] -= n
                break
        else:
            rows.append(Row(list(e.input_ids), list(e.labels), [n]))
            free.append(cutoff_len - n)
    return rows


class RowDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        # `input_ids` lets Trainer's group_by_length read lengths
        return {"input_ids": r.input_ids, "labels": r.labels, "lengths": r.lengths}


def block_causal_mask(lengths_per_row: list[list[int]], total: int) -> torch.Tensor:
    """bool [B, 1, T, T]: token i may attend token j iff same sample and j <= i.

    Padding positions attend only to themselves (a row with no allowed key would give NaN
    in softmax); their labels are -100 so they do not touch the loss.
    """
    B = len(lengths_per_row)
    mask = torch.zeros(B, 1, total, total, dtype=torch.bool)
    causal = torch.tril(torch.ones(total, total, dtype=torch.bool))
    for b, lengths in enumerate(lengths_per_row):
        start = 0
        for n in lengths:
            mask[b, 0, start:start + n, start:start + n] = causal[:n, :n]
            start += n
        idx = torch.arange(start, total)
        mask[b, 0, idx, idx] = True
    return mask


def position_ids_for(lengths_per_row: list[list[int]], total: int) -> torch.Tensor:
    """[B, T]: positions restart at 0 for every packed sample; padding continues counting."""
    pos = torch.zeros(len(lengths_per_row), total, dtype=torch.long)
    for b, lengths in enumerate(lengths_per_row):
        start = 0
        for n in lengths:
            pos[b, start:start + n] = torch.arange(n)
            start += n
        pos[b, start:] = torch.arange(total - start)
    return pos


def flatten_features(features: list[dict]) -> list[dict]:
    """Padding-free batching: the batch's rows back to back as ONE row, whose `lengths` keep
    every sample apart (run with restarted positions and per-sample attention, it computes what
    the padded batch computes, without the padding)."""
    return [{"input_ids": [t for f in features for t in f["input_ids"]],
             "labels": [t for f in features for t in f["labels"]],
             "lengths": [n for f in features for n in f["lengths"]]}]


def ignore_segment_starts(labels: torch.Tensor, lengths_per_row: list[list[int]]) -> None:
    """In place: a sample's first token is never predicted by the sample before it."""
    for b, lengths in enumerate(lengths_per_row):
        start = 0
        for n in lengths[:-1]:
            start += n
            labels[b, start] = IGNORE_INDEX


@dataclass
class Collator:
    """Right-pads a batch. Packed batches get restarted positions and a 4D block mask (with
    block_mask=False no mask: the attention splits rows at the restarts itself, see
    zhlora.train.packed_attention); plain batches get the usual 2D padding mask.
    flatten=True (with packed=True, block_mask=False) joins the batch into one unpadded row."""
    pad_token_id: int
    packed: bool = False
    block_mask: bool = True
    pad_to_multiple_of: int | None = None
    flatten: bool = False

    def __call__(self, features: list[dict]) -> dict:
        if self.flatten:
            features = flatten_features(features)
        T = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            T = (T + m - 1) // m * m
        B = len(features)
        ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        attn = torch.zeros(B, T, dtype=torch.long)
        for b, f in enumerate(features):
            n = len(f["input_ids"])
            ids[b, :n] = torch.tensor(f["input_ids"])
            labels[b, :n] = torch.tensor(f["labels"])
            attn[b, :n] = 1
        batch = {"input_ids": ids, "labels": labels}
        if self.packed:
            lengths = [f["lengths"] for f in features]
            ignore_segment_starts(labels, lengths)
            if self.block_mask:
                batch["attention_mask"] = block_causal_mask(lengths, T)
            batch["position_ids"] = position_ids_for(lengths, T)
        else:
            batch["attention_mask"] = attn
        return batch
