"""zhlora: LoRA fine-tuning, merging and serving for Chinese LLMs, with a CGEC vertical.

`import zhlora` registers zhlora's native ChatGLM family with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(thudm_folder)` works afterwards without remote code.
The registration runs as soon as transformers is imported (at once if it already is), so
`import zhlora` itself stays light for commands that never touch a model (scoring, data).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

_HAS_CHATGLM = (Path(__file__).parent / "models" / "chatglm" / "__init__.py").is_file()


def register_native_models() -> None:
    """Register the native ChatGLM family: transformers Auto classes, zhlora's family and
    template registries. Idempotent; the family/template lookups call it on a miss, so a
    lookup that runs before transformers is imported still finds ChatGLM."""
    if _HAS_CHATGLM:
        from zhlora.models import chatglm  # noqa: F401  (registers with AutoConfig/AutoModel/...)


_register_native_models = register_native_models


class _AfterTransformersImport(importlib.abc.MetaPathFinder):
    """Post-import hook: runs the registration right after `transformers` finishes importing."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            _register_native_models()

        spec.loader.exec_module = exec_module
        return spec


if "transformers" in sys.modules:
    _register_native_models()
elif not any(isinstance(f, _AfterTransformersImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTransformersImport())
