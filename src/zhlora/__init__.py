"""zhlora: LoRA fine-tuning, merging and serving for Chinese LLMs, with a CGEC vertical."""
from __future__ import annotations

__version__ = "0.1.0"


def _register_native_models() -> None:
    """Register zhlora's native model families (ChatGLM) with transformers' Auto classes."""
    try:
        from zhlora.models import chatglm  # noqa: F401
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("zhlora"):
            raise


_register_native_models()
