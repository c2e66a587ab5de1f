"""Map the module names PEFT saved to the tensor names of the base checkpoint.

PEFT names a LoRA layer by its module path inside the loaded model
(`model.layers.0.self_attn.q_proj`, `transformer.encoder.layers.0.self_attention.query_key_value`).
The checkpoint usually has the same names plus `.weight`, but a base saved from the bare
trunk lacks the `model.`/`transformer.` prefix, and a model with tied embeddings (ChatGLM-6B
v1, small Qwen2, some LLaMA) has no `lm_head.weight` at all: its output head *is* the input
embedding, so a LoRA on the head is a LoRA on that shared tensor (what PEFT's merge does too).
"""
from __future__ import annotations

from zhlora.errors import ZhloraError

INPUT_EMBEDDINGS = ("embed_tokens", "word_embeddings", "wte", "embed_in")
OUTPUT_HEADS = ("lm_head", "output_layer", "embed_out")


class KeyMap:
    """Resolve `<module>.<param>` to a base tensor name by exact name or unique dotted suffix
    (leading components may be dropped, never a layer index)."""

    def __init__(self, base_names, config: dict):
        self.names = set(base_names)
        self.by_suffix: dict[str, list[str]] = {}
        for n in self.names:
            parts = n.split(".")
            for i in range(len(parts) - 1):          # suffixes of >= 2 components
                self.by_suffix.setdefault(".".join(parts[i:]), []).append(n)
        self.tied = bool(config.get("tie_word_embeddings", False)) or not any(
            is_output_head(n) for n in self.names)

    def resolve(self, target: str) -> str | None:
        """Base tensor name for `target`, or None when the base has no such tensor."""
        if target in self.names:
            return target
        parts = target.split(".")
        for i in range(len(parts) - 1):
            if any(p.isdigit() for p in parts[:i]):
                break                                 # never drop a layer index
            hits = self.by_suffix.get(".".join(parts[i:]), [])
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise ZhloraError(f"adapter key {target!r} matches several base tensors "
                                  f"({', '.join(sorted(hits)[:4])}); the names are ambiguous")
        if self.tied and is_output_head(target):
            return self.input_embedding()
        return None

    def input_embedding(self) -> str | None:
        hits = [n for n in self.names if n.endswith(".weight") and n.split(".")[-2] in INPUT_EMBEDDINGS]
        return hits[0] if len(hits) == 1 else None


def is_output_head(name: str) -> bool:
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2] in OUTPUT_HEADS


def is_vocab_tensor(name: str) -> bool:
    """Tensors with one row per token: the input embedding and the output head."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2] in INPUT_EMBEDDINGS + OUTPUT_HEADS
