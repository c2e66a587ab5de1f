"""Shared fixtures: tiny random models built from configs (never downloaded)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("ZHLORA_TEST_THREADS", "2")))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ASSETS = Path(__file__).parent / "assets"
ZH_TEXTS = ["今天天气很好，我们去公园散步。", "请把这句话翻译成英文：我爱北京天安门。",
            "他的错误在于没有仔细检查。", "人工智能正在改变世界。", "你好，世界！"]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer hidden-64 LLaMA with a character tokenizer covering ZH_TEXTS + sample data."""
    from zhlora.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_llama"), "llama", texts=ZH_TEXTS + [_sample_chars()])


def _sample_chars() -> str:
    p = Path(__file__).resolve().parents[1] / "examples" / "data"
    return "".join(f.read_text(encoding="utf-8") for f in sorted(p.glob("*.jsonl"))) if p.is_dir() else ""


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present")
    return SHARED
