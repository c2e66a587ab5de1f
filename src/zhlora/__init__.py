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

__version__ = "0.1.0"


def register_native_models() -> None:
    """Register the native ChatGLM family: transformers Auto classes, zhlora's family and
    template registries (`families.NATIVE_MODULES`). Idempotent."""
    from zhlora.families import load_native_modules

    load_native_modules()


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
            register_native_models()

        spec.loader.exec_module = exec_module
        return spec


if "transformers" in sys.modules:
    register_native_models()
elif not any(isinstance(f, _AfterTransformersImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTransformersImport())
