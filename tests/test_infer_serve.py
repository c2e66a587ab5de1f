"""`zhlora serve` as a real subprocess: OpenAI client, adapters under concurrency, errors, auth,
client disconnects."""
from __future__ import annotations

import subprocess
import threading
import time

import httpx
import pytest
from test_infer_fixtures import (PROMPTS, convs, engine, free_port, infer_setup,  # noqa: F401
                                 subprocess_env, wait_ready, zhlora_cmd)

from zhlora.infer.engine import GenerationOptions

KEY = "sk-test-123"
CAP = 300


@pytest.fixture(scope="module")
def server(infer_setup, tmp_path_factory):
    base, adapters = infer_setup
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cmd = zhlora_cmd("serve", "--model", base, "--adapter", f"gec={adapters['gec']}",
                     "--adapter", f"poem={adapters['poem']}", "--port", port, "--api-key", KEY,
                     "--max-concurrency", 32, "--max-batch", 8, "--max-tokens-cap", CAP)
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=subprocess_env())
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/health", log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def client(url):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=KEY, timeout=120, max_retries=0)


def chat(c, model, prompt, **kw):
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                  max_tokens=16, temperature=0, **kw)
    return r


def test_infer_serve_models(server):
    ids = [m.id for m in client(server).models.list().data]
    assert ids == ["base", "base:gec", "base:poem"]


def test_infer_serve_chat_matches_engine(server, engine):
    c = client(server)
    want = engine.generate(convs(PROMPTS[:1]), "gec", GenerationOptions(max_new_tokens=16))[0]
    r = chat(c, "base:gec", PROMPTS[0])
    assert r.choices[0].message.content == want and want
    assert r.usage.completion_tokens <= 16 and r.usage.prompt_tokens == len(
        engine.encode(convs(PROMPTS[:1])[0], "gec", 16))
    pieces = [ch.choices[0].delta.content or "" for ch in chat(c, "base:gec", PROMPTS[0], stream=True)
              if ch.choices]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == want


def test_infer_serve_completions(server, engine):
    c = client(server)
    r = c.completions.create(model="base:poem", prompt="今天天气", max_tokens=12, temperature=0)
    ids = engine.encode_text("今天天气")
    want = engine.complete([ids], "poem", GenerationOptions(max_new_tokens=12),
                           stop_ids=[engine.tokenizer.eos_token_id])[0].text
    assert r.choices[0].text == want
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="base:poem", prompt="今天天气", max_tokens=12, temperature=0, stream=True) if ch.choices)
    assert streamed == want


def test_infer_serve_concurrent_adapters(server, engine):
    """Requests for different adapters in flight together each get their own adapter's answer."""
    opts = GenerationOptions(max_new_tokens=16)
    jobs = [(a, p) for p in PROMPTS[:3] for a in ("gec", "poem", None)]
    want = {(a, p): engine.generate(convs([p]), a, opts, batch_size=1)[0] for a, p in jobs}
    assert len({want[("gec", p)] for p in PROMPTS[:3]} | {want[("poem", p)] for p in PROMPTS[:3]}) == 6
    got, c = {}, client(server)

    def ask(a, p, stream):
        model = "base" if a is None else f"base:{a}"
        if stream:
            got[(a, p)] = "".join(ch.choices[0].delta.content or "" for ch in chat(c, model, p, stream=True)
                                  if ch.choices)
        else:
            got[(a, p)] = chat(c, model, p).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(a, p, i % 2 == 0)) for i, (a, p) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert got == want


BAD = [
    ("malformed JSON", b'{"model": "base", "messages": [', 400, "invalid_json"),
    ("not an object", b'[1, 2]', 400, "invalid_json"),
    ("unknown model", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model_not_found"),
    ("missing model", {"messages": [{"role": "user", "content": "x"}]}, 400, "missing_parameter"),
    ("max_tokens type", {"model": "base", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"},
     400, "invalid_type"),
    ("temperature type", {"model": "base", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
     400, "invalid_type"),
    ("messages type", {"model": "base", "messages": "hello"}, 400, "invalid_type"),
    ("content type", {"model": "base", "messages": [{"role": "user", "content": 5}]}, 400, "invalid_type"),
    ("bad role", {"model": "base", "messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_value"),
    ("over cap", {"model": "base", "messages": [{"role": "user", "content": "x"}], "max_tokens": CAP + 1},
     400, "invalid_value"),
    ("zero max_tokens", {"model": "base", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
     400, "invalid_value"),
    ("empty messages", {"model": "base", "messages": []}, 400, "invalid_value"),
    ("ends with assistant", {"model": "base", "messages": [{"role": "user", "content": "x"},
                                                           {"role": "assistant", "content": "y"}]},
     400, "invalid_value"),
    ("top_p range", {"model": "base", "messages": [{"role": "user", "content": "x"}], "top_p": 0}, 400,
     "invalid_value"),
    ("n with stream", {"model": "base", "messages": [{"role": "user", "content": "x"}], "n": 2, "stream": True},
     400, "invalid_value"),
]


@pytest.mark.parametrize("name,body,status,code", BAD, ids=[b[0] for b in BAD])
def test_infer_serve_bad_requests(server, name, body, status, code):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{server}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                   timeout=60, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["message"]


def test_infer_serve_bad_completion_prompt(server):
    r = httpx.post(f"{server}/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                   json={"model": "base", "prompt": ["ok", 3]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_infer_serve_needs_key(server, headers):
    r = httpx.get(f"{server}/v1/models", headers=headers, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(f"{server}/v1/chat/completions", headers=headers, timeout=30,
                   json={"model": "base", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401


def _health(server) -> dict:
    return httpx.get(f"{server}/health", timeout=30).json()


def test_infer_serve_disconnect_frees_slot(server):
    """Two streams are dropped mid-stream; the generations are cancelled (not run to
    max_tokens), nothing stays in flight, and a later request still gets served."""
    before = _health(server)["cancelled_streams"]
    body = {"model": "base:gec", "messages": [{"role": "user", "content": "你好"}], "max_tokens": CAP,
            "stream": True, "ignore_eos": True}
    for _ in range(2):
        with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {KEY}"}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the role chunk
            assert '"content"' in next(l for l in lines if l.startswith("data: "))
    deadline = time.monotonic() + 60
    while _health(server)["cancelled_streams"] < before + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    h = _health(server)
    assert h["cancelled_streams"] == before + 2 and h["active"] == 0
    r = chat(client(server), "base", "你好")
    assert r.choices[0].finish_reason in ("stop", "length")
