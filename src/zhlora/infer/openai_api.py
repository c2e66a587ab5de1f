"""OpenAI request parsing and response shapes, kept apart from the web framework.

Every problem with a request becomes an `APIError` that the server renders as OpenAI's
error object `{"error": {"message", "type", "param", "code"}}` with a 4xx status.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from zhlora.conversation import Conversation, Message
from zhlora.infer.engine import GenerationOptions

MAX_N = 8
MAX_STOP = 4


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ParsedRequest:
    model: str
    adapter: str | None
    options: GenerationOptions
    n: int
    stream: bool
    include_usage: bool
    conv: Conversation | None = None     # chat
    prompts: list[str] | None = None     # completions


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(body).__name__}",
                       code="invalid_json")
    return body


def _field(body: dict, key: str, types, default=None, required: bool = False):
    if key not in body or body[key] is None:
        if required:
            raise APIError(400, f"missing required parameter '{key}'", param=key, code="missing_parameter")
        return default
    v = body[key]
    ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in _as_tuple(types))
    if not ok:
        names = "/".join(t.__name__ for t in _as_tuple(types))
        raise APIError(400, f"'{key}' must be of type {names}, got {type(v).__name__}",
                       param=key, code="invalid_type")
    return v


def text_field(body: dict, key: str) -> str:
    """A required non-empty string field."""
    v = _field(body, key, str, required=True)
    if not v:
        raise APIError(400, f"'{key}' must not be empty", param=key, code="invalid_value")
    return v


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _in_range(key: str, v, lo, hi, lo_open: bool = False):
    if v is None:
        return v
    if (v <= lo if lo_open else v < lo) or v > hi:
        raise APIError(400, f"'{key}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}",
                       param=key, code="invalid_value")
    return v


def parse_common(body: dict, models: dict[str, str | None], defaults_for, cap: int) -> ParsedRequest:
    """Fields shared by chat and completions. `models`: model id -> adapter name."""
    model = _field(body, "model", str, required=True)
    if model not in models:
        raise APIError(404, f"the model '{model}' does not exist; available: {', '.join(models)}",
                       param="model", code="model_not_found")
    adapter = models[model]
    base = defaults_for(adapter)
    max_tokens = _field(body, "max_completion_tokens", int)
    max_tokens = _field(body, "max_tokens", int) if max_tokens is None else max_tokens
    if max_tokens is not None and max_tokens > cap:
        raise APIError(400, f"max_tokens={max_tokens} is over this server's cap {cap} (--max-tokens-cap)",
                       param="max_tokens", code="invalid_value")
    _in_range("max_tokens", max_tokens, 1, cap)
    stop = _field(body, "stop", (str, list))
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (len(stop) > MAX_STOP or not all(isinstance(s, str) for s in stop)):
        raise APIError(400, f"'stop' must be a string or a list of at most {MAX_STOP} strings",
                       param="stop", code="invalid_value")
    opts = GenerationOptions(
        max_new_tokens=max_tokens or min(base.max_new_tokens, cap),
        temperature=_in_range("temperature", _field(body, "temperature", (int, float), base.temperature), 0, 2),
        top_p=_in_range("top_p", _field(body, "top_p", (int, float), base.top_p), 0, 1, lo_open=True),
        stop=stop if stop is not None else base.stop,
        seed=_field(body, "seed", int),
        repetition_penalty=_in_range("repetition_penalty", _field(
            body, "repetition_penalty", (int, float), base.repetition_penalty), 0, 10, lo_open=True),
        ignore_eos=_field(body, "ignore_eos", bool, False))
    n = _in_range("n", _field(body, "n", int, 1), 1, MAX_N)
    stream = _field(body, "stream", bool, False)
    if stream and n > 1:
        raise APIError(400, "n > 1 is not supported with stream=true", param="n", code="invalid_value")
    usage = _field(body, "stream_options", dict, {}).get("include_usage", False) is True
    return ParsedRequest(model, adapter, opts, n, stream, usage)


def parse_chat(body: dict, models, defaults_for, cap: int) -> ParsedRequest:
    req = parse_common(body, models, defaults_for, cap)
    req.conv = messages_to_conversation(_field(body, "messages", list, required=True))
    return req


def parse_completion(body: dict, models, defaults_for, cap: int) -> ParsedRequest:
    req = parse_common(body, models, defaults_for, cap)
    prompt = _field(body, "prompt", (str, list), required=True)
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise APIError(400, "'prompt' must be a non-empty string or a list of non-empty strings",
                       param="prompt", code="invalid_value")
    if req.stream and len(prompts) > 1:
        raise APIError(400, "stream=true takes a single prompt", param="prompt", code="invalid_value")
    req.prompts = prompts
    return req


def messages_to_conversation(msgs: list) -> Conversation:
    if not msgs:
        raise APIError(400, "'messages' must not be empty", param="messages", code="invalid_value")
    system, turns = [], []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object", param=where, code="invalid_type")
        role, content = m.get("role"), _content_text(m.get("content"), where)
        if role in ("system", "developer"):
            system.append(content)
        elif role in ("user", "assistant"):
            if turns and turns[-1].role == role:  # consecutive turns of one role are joined
                turns[-1].content += "\n" + content
            else:
                turns.append(Message(role, content))
        else:
            raise APIError(400, f"{where}.role must be system, user or assistant, got {role!r}",
                           param=f"{where}.role", code="invalid_value")
    if not turns or turns[0].role != "user" or turns[-1].role != "user":
        raise APIError(400, "'messages' must start (after system messages) and end with a user message",
                       param="messages", code="invalid_value")
    return Conversation(turns, system="\n".join(system))


def _content_text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise APIError(400, f"{where}.content must be a string or a list of text parts",
                   param=f"{where}.content", code="invalid_type")


# -- responses --------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def chat_response(rid: str, model: str, completions) -> dict:
    choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                "finish_reason": finish_reason(c.finish_reason)} for i, c in enumerate(completions)]
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(completions[0].prompt_tokens,
                                               sum(c.completion_tokens for c in completions))}


def completion_response(rid: str, model: str, completions) -> dict:
    choices = [{"index": i, "text": c.text, "logprobs": None, "finish_reason": finish_reason(c.finish_reason)}
               for i, c in enumerate(completions)]
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(sum(c.prompt_tokens for c in completions),
                                               sum(c.completion_tokens for c in completions))}


def stream_chunk(rid: str, model: str, chat: bool, text: str | None = None, role: bool = False,
                 finish: str | None = None, usage_obj: dict | None = None) -> str:
    if chat:
        delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    data = {"id": rid, "object": obj, "created": int(time.time()), "model": model,
            "choices": [] if usage_obj else [choice]}
    if usage_obj:
        data["usage"] = usage_obj
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
