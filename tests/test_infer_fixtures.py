"""Shared helpers for the infer tests: a tiny base and two adapters that change its output.

(Collected by pytest but holds no tests; the other test_infer_* files import from it.)
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["你好", "今天天气很好，我们去公园散步。", "请把这句话翻译成英文：我爱北京天安门。", "人工智能"]


def make_adapter(base: Path, out: Path, seed: int, template: str = "alpaca", generation=None) -> Path:
    """A LoRA adapter on q/v with random lora_B (std 0.5) so it visibly changes the output."""
    from zhlora.train.lora import make_tiny_adapter

    return make_tiny_adapter(base, out, seed=seed, template=template, generation=generation)


@pytest.fixture(scope="session")
def infer_setup(tiny_llama, tmp_path_factory):
    """-> (base dir, {"gec": dir, "poem": dir}) built once per session."""
    root = tmp_path_factory.mktemp("infer_adapters")
    adapters = {"gec": make_adapter(tiny_llama, root / "gec", seed=1),
                "poem": make_adapter(tiny_llama, root / "poem", seed=2)}
    return tiny_llama, adapters


@pytest.fixture(scope="session")
def engine(infer_setup):
    from zhlora.infer.engine import Engine

    base, adapters = infer_setup
    return Engine.load(base, adapters=adapters)


def convs(prompts=PROMPTS):
    from zhlora.conversation import Conversation

    return [Conversation.from_pairs([(p, None)]) for p in prompts]


def zhlora_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "zhlora", *map(str, args)]


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    env.pop("HTTP_PROXY", None), env.pop("http_proxy", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"server at {url} not ready after {timeout}s: {log.read_text()[-3000:]}")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
