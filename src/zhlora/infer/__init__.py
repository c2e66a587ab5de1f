"""Inference: one base model, many LoRA adapters (chat, predict, serve, webui)."""
