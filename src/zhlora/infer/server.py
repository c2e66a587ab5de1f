"""`zhlora serve`: an OpenAI-compatible HTTP server over one `Engine`.

Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (both with
`stream`), POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's API; only with
`--allow-adapter-loading`), GET /health, GET /metrics (Prometheus). The request's `model`
picks the adapter: `base` is the base model, `base:NAME` (or just `NAME`) the adapter NAME.

Every request, streaming or not, of any adapter, goes to the engine's one scheduler, which
runs them in one continuous batch (`scheduler.py`). At most `max_concurrency` requests are
in flight (running or queued); past that a request gets 429 at once. A streaming client that
disconnects frees its batch slot at the next token.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import threading
from dataclasses import dataclass, field

from fastapi import FastAPI, Request  # module level: FastAPI resolves the string annotations here
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from zhlora.errors import ZhloraError
from zhlora.infer import openai_api as oa
from zhlora.infer.engine import Engine
from zhlora.infer.metrics import ServeMetrics
from zhlora.infer.streaming import AsyncTokenStream


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_concurrency: int = 64    # requests in flight (running + queued); more get 429
    max_tokens_cap: int = 2048
    base_name: str = "base"
    max_batch: int | None = None  # sequences in one batch (None: the engine's own setting)
    allow_adapter_loading: bool = False


@dataclass
class ServerStats:
    """Counters shown by GET /health (streams that finished, by reason; requests in flight)."""
    active: int = 0
    finished: int = 0
    cancelled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, completion) -> None:
        with self.lock:
            self.finished += 1
            self.cancelled += completion.finish_reason == "cancelled"


def model_table(engine: Engine, base_name: str) -> dict[str, str | None]:
    """Model id -> adapter name (None = base). `NAME` alone is an alias of `base:NAME`."""
    if base_name in engine.adapter_names:
        raise ZhloraError(f"--served-model-name {base_name!r} is also the name of an adapter, which would "
                          "hide it; rename the adapter (NAME=DIR) or pass another --served-model-name")
    table: dict[str, str | None] = {base_name: None}
    for a in engine.adapter_names:
        table[f"{base_name}:{a}"] = a
    for a in engine.adapter_names:
        table.setdefault(a, a)
    return table


def create_app(engine: Engine, cfg: ServeConfig):
    app = FastAPI(title="zhlora", docs_url=None, redoc_url=None)
    model_table(engine, cfg.base_name)  # a name clash fails at start-up
    if cfg.max_batch:
        engine.scheduler.max_batch = max(1, cfg.max_batch)
    metrics = ServeMetrics(engine.scheduler, cfg.base_name)
    engine.scheduler.metrics = metrics
    state = _State(engine, cfg, ServerStats(), metrics)
    app.state.zhlora = state

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if cfg.api_key and request.url.path.startswith("/v1/"):
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {cfg.api_key}".encode()):
                return _error(oa.APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                          code="invalid_api_key"))
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return _error(oa.APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                  code="not_found" if exc.status_code == 404 else None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        return _error(oa.APIError(400, f"invalid request: {exc.errors()}"))

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        return _error(oa.APIError(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error"))

    @app.get("/health")
    async def health():
        s, sch = state.stats, engine.scheduler
        return {"status": "ok", "active": s.active, "finished_streams": s.finished,
                "cancelled_streams": s.cancelled, "running": sch.running, "waiting": sch.waiting,
                "steps": sch.steps, "widest_batch": sch.widest,
                "prefill_forwards": sch.prefill_forwards, "prefilled": sch.prefilled, "adapters": engine.adapter_names,
                "resident_adapters": list(engine.adapters.resident)}

    @app.get("/metrics")
    async def prometheus():
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/v1/models")
    async def list_models():
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "zhlora",
                 "root": str(engine.base_dir or m), "parent": None if a is None else cfg.base_name}
                for m, a in model_table(engine, cfg.base_name).items() if a is None or m != a]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await state.handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await state.handle(request, chat=False)

    @app.post("/v1/load_lora_adapter")
    async def load_lora(request: Request):
        return await state.adapter_change(request, load=True)

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(request: Request):
        return await state.adapter_change(request, load=False)

    return app


def _error(err: oa.APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


@dataclass
class _State:
    engine: Engine
    cfg: ServeConfig
    stats: ServerStats
    metrics: ServeMetrics

    async def handle(self, request, chat: bool):
        try:
            body = oa.parse_json(await request.body())
            parse = oa.parse_chat if chat else oa.parse_completion
            models = model_table(self.engine, self.cfg.base_name)
            req = parse(body, models, self.engine.default_options, self.cfg.max_tokens_cap)
            prompts = self._prompts(req)
        except oa.APIError as e:
            return _error(e)
        except ZhloraError as e:
            return _error(oa.APIError(400, str(e)))
        if self.stats.active >= self.cfg.max_concurrency:
            return _error(oa.APIError(429, f"the server is at its limit of {self.cfg.max_concurrency} requests "
                                      "in flight (--max-concurrency); retry later", type_="requests",
                                      code="rate_limit_exceeded"))
        self.stats.active += 1
        if req.stream:
            from fastapi.responses import StreamingResponse

            return StreamingResponse(self._events(req, prompts[0], chat), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            return await self._complete(req, prompts, chat)
        finally:
            self.stats.active -= 1

    def _prompts(self, req) -> list[list[int]]:
        eng, room = self.engine, self.engine.max_positions
        if req.conv is not None:
            return [eng.encode(req.conv, req.adapter, req.options.max_new_tokens)] * req.n
        ids = [eng.encode_text(p) for p in req.prompts for _ in range(req.n)]
        too_long = [len(i) for i in ids if room and len(i) + req.options.max_new_tokens > room]
        if too_long:
            raise oa.APIError(400, f"prompt ({too_long[0]} tokens) + max_tokens ({req.options.max_new_tokens}) "
                              f"is over the model's {room} positions", param="prompt",
                              code="context_length_exceeded")
        return ids

    def _stop_ids(self, chat: bool):
        tok = self.engine.tokenizer
        return None if chat else [t for t in (tok.eos_token_id,) if t is not None]

    async def _complete(self, req, prompts, chat: bool):
        seqs = [self.engine.submit(p, req.adapter, req.options, self._stop_ids(chat)) for p in prompts]
        try:
            done = [await asyncio.wrap_future(s.future) for s in seqs]
        finally:  # a client gone (task cancelled) frees its slots
            for s in seqs:
                s.cancel.set()
        rid = oa.new_id("chatcmpl" if chat else "cmpl")
        return (oa.chat_response if chat else oa.completion_response)(rid, req.model, done)

    async def _events(self, req, prompt: list[int], chat: bool):
        """Server-sent events. Every exit (done, error, client gone) frees the request's
        place and cancels an unfinished generation."""
        rid = oa.new_id("chatcmpl" if chat else "cmpl")
        stream = None
        try:
            stream = self.engine.open_stream(
                prompt, req.adapter, req.options, self._stop_ids(chat),
                stream_cls=lambda rules, n, cancel: AsyncTokenStream(rules, n, cancel, self.stats.record))
            if chat:
                yield oa.stream_chunk(rid, req.model, chat, role=True)
            async for piece in stream.pieces():
                yield oa.stream_chunk(rid, req.model, chat, text=piece)
            c = stream.completion
            yield oa.stream_chunk(rid, req.model, chat, finish=oa.finish_reason(c.finish_reason))
            if req.include_usage:
                yield oa.stream_chunk(rid, req.model, chat, usage_obj=oa.usage(c.prompt_tokens, c.completion_tokens))
            yield "data: [DONE]\n\n"
        except Exception as e:  # a generation error mid-stream: tell the client, then stop
            err = oa.APIError(500, f"generation failed: {type(e).__name__}: {e}", type_="server_error")
            yield f"data: {json.dumps(err.body())}\n\n"
        finally:
            if stream is not None and stream.completion is None:
                stream.cancel.set()
            self.stats.active -= 1

    async def adapter_change(self, request, load: bool):
        """vLLM's `/v1/load_lora_adapter` {"lora_name", "lora_path"} and `/v1/unload_lora_adapter`
        {"lora_name"}: plain-text success, OpenAI error objects otherwise."""
        from starlette.concurrency import run_in_threadpool

        if not self.cfg.allow_adapter_loading:
            return _error(oa.APIError(403, "loading adapters at run time is off: start the server with "
                                      "--allow-adapter-loading (it reads folders on the server)",
                                      code="adapter_loading_disabled"))
        try:
            body = oa.parse_json(await request.body())
            name = oa.text_field(body, "lora_name")
            if load:
                await run_in_threadpool(self.engine.load_adapter, name, oa.text_field(body, "lora_path"))
            else:
                if name not in self.engine.adapter_names:
                    raise oa.APIError(404, f"no adapter named {name!r} is loaded", param="lora_name",
                                      code="model_not_found")
                await run_in_threadpool(self.engine.unload_adapter, name)
        except oa.APIError as e:
            return _error(e)
        except ZhloraError as e:
            return _error(oa.APIError(400, str(e), param="lora_path" if load else "lora_name"))
        verb = "added" if load else "removed"
        return PlainTextResponse(f"Success: LoRA adapter '{name}' {verb} successfully.")


def serve(engine: Engine, cfg: ServeConfig) -> None:
    import uvicorn

    names = ", ".join(model_table(engine, cfg.base_name))
    print(f"zhlora serve: http://{cfg.host}:{cfg.port}/v1 — models: {names}", flush=True)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        print(f"warning: listening on {cfg.host} without --api-key; anyone who can reach it can use it",
              flush=True)
    uvicorn.run(create_app(engine, cfg), host=cfg.host, port=cfg.port, log_level="warning")
