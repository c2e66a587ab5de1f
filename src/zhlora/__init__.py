"""zhlora: LoRA fine-tuning, merging and serving for Chinese LLMs, with a CGEC vertical."""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def _register_native_models() -> None:
    """Register zhlora's native model families (ChatGLM) with transformers' Auto classes."""
    if (Path(__file__).parent / "models" / "chatglm" / "__init__.py").is_file():
        from zhlora.models import chatglm  # noqa: F401


_register_native_models()
