"""Padded batches of prompt ids (`pad_rows`, `pad_id`) for callers that run the model on
a batch themselves (GEC's constrained decoder and rescorer). Generation requests go to the
engine's scheduler instead (`scheduler.py`).
"""
from __future__ import annotations

import torch


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its end-of-text id, else 0."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def pad_rows(rows: list[list[int]], pad: int, device, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids (B, T) and attention_mask (B, T), padded on the left (generation) or the
    right (scoring: positions then run 0..len-1 in every row)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
            ids[i, cols] = torch.tensor(r, dtype=torch.long)
            mask[i, cols] = 1
    return ids.to(device), mask.to(device)
