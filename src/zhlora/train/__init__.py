"""LoRA supervised fine-tuning (PEFT layers, transformers Trainer)."""
