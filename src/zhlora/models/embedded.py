"""The embedded default base: a tiny Chinese LLaMA that ships inside the package.

Made by `zhlora pretrain` (src/zhlora/embedded/pretrain.py); its MODEL_CARD.md says how.
"""
from __future__ import annotations

from pathlib import Path

EMBEDDED_BASE_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-zh"
