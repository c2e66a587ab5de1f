"""`import zhlora` is light, and still registers the native ChatGLM family with transformers."""
from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_import_is_light_and_registers_on_transformers_import():
    out = _run("import sys, zhlora; print('transformers' in sys.modules, 'torch' in sys.modules);"
               "from transformers import CONFIG_MAPPING; print('chatglm' in CONFIG_MAPPING)")
    assert out.splitlines() == ["False False", "True"]


def test_registers_when_transformers_came_first():
    out = _run("import transformers, zhlora; from transformers import CONFIG_MAPPING;"
               "print('chatglm' in CONFIG_MAPPING)")
    assert out == "True"


def test_cli_help_lists_every_stage():
    out = _run("from zhlora.cli import build_parser; print(build_parser().format_help())")
    for cmd in ("data", "train", "merge", "verify", "export", "chat", "predict", "serve", "webui", "gec",
                "demo"):
        assert f"    {cmd} " in out or f"    {cmd}\n" in out, cmd


def test_native_family_and_templates_found_before_transformers_is_imported():
    """A fresh `zhlora train` looks up the family and template before anything imports
    transformers; the lazy registration must not hide ChatGLM from those lookups."""
    out = _run("import sys; from zhlora.families import family_for_config; from zhlora.templates import get_template;"
               "print('transformers' in sys.modules);"
               "print(family_for_config({'model_type': 'chatglm', 'multi_query_attention': True, 'kv_channels': 4,"
               " 'ffn_hidden_size': 8, 'seq_length': 8, 'padded_vocab_size': 8}).name, get_template('chatglm3').name)")
    assert out.splitlines() == ["False", "chatglm chatglm3"]
