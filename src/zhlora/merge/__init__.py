"""Merge LoRA adapters into a base model (streaming), verify the result, export to GGUF."""
from __future__ import annotations

from zhlora.merge.merge import MergeResult, merge_adapters  # noqa: F401
