"""`zhlora serve` in-process: 429 past --max-concurrency, vLLM's load/unload endpoints (off
unless allowed), /metrics per adapter."""
from __future__ import annotations

import contextlib
import threading
import time

import httpx
import pytest
from test_infer_fixtures import PROMPTS, convs, free_port, infer_setup  # noqa: F401

from zhlora.infer.engine import Engine, GenerationOptions
from zhlora.infer.server import ServeConfig, create_app


@contextlib.contextmanager
def running(engine, **cfg):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, ServeConfig(port=port, **cfg)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(timeout=30)


@pytest.fixture()
def eng(infer_setup):
    base, adapters = infer_setup
    return Engine.load(base, adapters={"gec": adapters["gec"]})


def _chat(url, model, **kw):
    body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 8,
            "temperature": 0, **kw}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def test_infer_serve_429_past_max_concurrency(eng):
    with running(eng, max_concurrency=1) as url:
        body = {"model": "base:gec", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 300,
                "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()                     # kept: dropping it would close the stream
            assert '"role"' in next(lines)             # the one request in flight
            busy = _chat(url, "base")
            assert busy.status_code == 429
            err = busy.json()["error"]
            assert err["code"] == "rate_limit_exceeded" and "--max-concurrency" in err["message"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/health").json()["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _chat(url, "base").status_code == 200


def test_infer_serve_adapter_loading_is_off_by_default(eng, infer_setup):
    with running(eng) as url:
        r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "poem",
                                                             "lora_path": str(infer_setup[1]["poem"])})
        assert r.status_code == 403 and "--allow-adapter-loading" in r.json()["error"]["message"]
        assert eng.adapter_names == ["gec"]


def test_infer_serve_load_unload_and_metrics(eng, infer_setup, tmp_path):
    poem = infer_setup[1]["poem"]
    want = Engine.load(infer_setup[0], adapters={"poem": poem}).generate(
        convs(PROMPTS[:1]), "poem", GenerationOptions(max_new_tokens=8))[0]
    with running(eng, allow_adapter_loading=True, api_key="k") as url:
        auth = {"Authorization": "Bearer k"}
        post = lambda path, body: httpx.post(f"{url}{path}", json=body, headers=auth, timeout=120)  # noqa: E731
        assert post("/v1/load_lora_adapter", {"lora_name": "poem", "lora_path": str(poem)}).status_code == 200
        assert httpx.post(f"{url}/v1/load_lora_adapter", json={}).status_code == 401  # behind --api-key
        for body, status in [({"lora_name": "poem", "lora_path": str(poem)}, 400),        # duplicate
                             ({"lora_name": "x", "lora_path": str(tmp_path / "nope")}, 400),
                             ({"lora_name": "x"}, 400)]:
            r = post("/v1/load_lora_adapter", body)
            assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models", headers=auth).json()["data"]]
        assert ids == ["base", "base:gec", "base:poem"]
        r = httpx.post(f"{url}/v1/chat/completions", headers=auth, timeout=120, json={
            "model": "poem", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 8})
        assert r.json()["choices"][0]["message"]["content"] == want
        text = httpx.get(f"{url}/metrics").text
        assert 'zhlora_requests_total{adapter="poem",finish_reason=' in text
        assert 'zhlora_time_to_first_token_seconds_count{adapter="poem"} 1.0' in text
        assert "zhlora_queue_wait_seconds_bucket" in text and "zhlora_running_sequences" in text
        assert post("/v1/unload_lora_adapter", {"lora_name": "poem"}).status_code == 200
        assert post("/v1/unload_lora_adapter", {"lora_name": "poem"}).status_code == 404
        assert httpx.post(f"{url}/v1/chat/completions", headers=auth, timeout=60, json={
            "model": "poem", "messages": [{"role": "user", "content": "x"}]}).status_code == 404
    assert eng.adapter_names == ["gec"]
