"""zhlora's templates as Jinja `chat_template` strings, and rendering of Jinja templates.

`chat_template_jinja(name)` turns a registered template (its data) into the Jinja string that
`tokenizer.apply_chat_template`, vLLM and llama.cpp use, so a folder zhlora writes tells every
runtime the prompt it was trained on. The string renders text; special tokens appear as their
strings (`<|im_start|>`, `{{ bos_token }}`), which the model's tokenizer parses as one token each.
With `add_generation_prompt=True` the rendering of a conversation that ends with a user turn is
`encode_prompt`'s prompt; the rendering of a whole conversation is `encode`'s training text.

`render_chat_template` is the thin wrapper over transformers' Jinja renderer (the sandboxed
environment `apply_chat_template` uses), for reading the templates folders carry.
"""
from __future__ import annotations

from zhlora.errors import ZhloraError

_SYSTEM = ("{%- if messages and messages[0]['role'] == 'system' -%}"
           "{%- set sys = messages[0]['content'] or {default} -%}{%- set msgs = messages[1:] -%}"
           "{%- else -%}{%- set sys = {default} -%}{%- set msgs = messages -%}{%- endif -%}\n")


def _lit(text: str) -> str:
    """A Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _expr(parts: tuple, content: str = "''", idx: str = "''") -> str:
    """Template parts -> one Jinja expression; `content`/`idx` are Jinja expressions."""
    from zhlora.templates import BOS, EOS, Tok

    out = []
    for p in parts:
        if p is BOS:
            out.append("bos_token")
        elif p is EOS:
            out.append("eos_token")
        elif isinstance(p, Tok):
            out.append(_lit(p.token))
        else:
            before, has, after = p.partition("{content}")
            for i, chunk in enumerate(before.split("{idx}")):
                out += ([f"({idx}|string)"] if i else []) + ([_lit(chunk)] if chunk else [])
            if has:
                out.append(f"({content})")
                out.append(_expr((after,), content, idx) if after else "''")
    return " ~ ".join(out) or "''"


def _emit(parts: tuple, content: str = "''", idx: str = "''") -> str:
    return "{{- " + _expr(parts, content, idx) + " -}}" if parts else ""


def chat_template_jinja(name_or_template) -> str:
    """The Jinja chat_template of a zhlora template (by name or object)."""
    from zhlora.templates import ChatTemplate, get_template

    t = get_template(name_or_template) if isinstance(name_or_template, str) else name_or_template
    if hasattr(t, "history"):  # the ChatGLM-6B/ChatGLM2 round-text templates
        return _round_text_jinja(t)
    if not isinstance(t, ChatTemplate):
        raise ZhloraError(f"{t!r} is not a zhlora chat template")
    return _turns_jinja(t)


def _turns_jinja(t) -> str:
    inline = "".join(t.system) if t.system_in_first_user else ""
    first_user = (f"(({_lit(inline)}|replace('{{content}}', sys)) ~ m['content'] if loop.first and sys "
                  "else m['content'])") if inline else "m['content']"
    return "".join([
        f"{{#- zhlora template {t.name!r}: the prompt zhlora trains on -#}}\n",
        _SYSTEM.replace("{default}", _lit(t.default_system)),
        _emit(t.prefix),
        "" if t.system_in_first_user else "{%- if sys -%}" + _emit(t.system, "sys") + "{%- endif -%}",
        "{%- for m in msgs -%}{%- set idx = loop.index0 // 2 + " + str(t.round_start) + " -%}",
        "{%- if m['role'] == 'user' -%}",
        "{%- if not loop.first -%}" + _emit(t.separator, idx="idx") + "{%- endif -%}" if t.separator else "",
        ("{%- if loop.first -%}" if t.assistant_end_opens_user else "") + _emit(t.user_open, idx="idx")
        + ("{%- endif -%}" if t.assistant_end_opens_user else ""),
        _emit(t.user, first_user, "idx"),
        "{%- elif m['role'] == 'assistant' -%}",
        _emit(t.assistant + t.assistant_end,
              f"({_lit(t.last_answer_prefix)} if loop.last else '') ~ m['content']" if t.last_answer_prefix
              else "m['content']", "idx"),
        "{%- endif -%}{%- endfor -%}",
    ])


def _fmt(fmt: str, **exprs: str) -> str:
    """A `str.format` pattern ({idx} {query} {answer}) -> one Jinja expression."""
    import string

    out = []
    for literal, field, _, _ in string.Formatter().parse(fmt):
        if literal:
            out.append(_lit(literal))
        if field:
            out.append(f"(({exprs[field]})|string)")
    return " ~ ".join(out) or "''"


def _round_text_jinja(t) -> str:
    history = _fmt(t.history, idx=f"loop.index0 // 2 + {t.round_start}", query="m['content']",
                   answer="msgs[loop.index0 + 1]['content']")
    current = _fmt(t.current, idx=f"loop.index0 // 2 + {t.round_start}", query="m['content']")
    single = _fmt(t.single, query="m['content']") if t.single else current
    return "".join([
        f"{{#- zhlora template {t.name!r}: the prompt zhlora trains on -#}}\n",
        _SYSTEM.replace("{default}", _lit(t.default_system)),
        "{%- set last = msgs|length - 1 if msgs[-1]['role'] == 'user' else msgs|length - 2 -%}",
        _emit(t.before),
        "{%- if sys -%}{{- sys ~ '\\n' -}}{%- endif -%}",
        "{%- for m in msgs -%}",
        "{%- if loop.index0 < last and m['role'] == 'user' -%}{{- " + history + " -}}",
        "{%- elif loop.index0 == last -%}{%- if last == 0 -%}{{- " + single + " -}}{%- else -%}{{- "
        + current + " -}}{%- endif -%}" + _emit(t.after),
        "{%- elif loop.index0 == last + 1 -%}" + _emit(t.assistant + t.assistant_end, "m['content']"),
        "{%- endif -%}{%- endfor -%}",
    ])


def render_chat_template(chat_template: str, messages: list[dict], add_generation_prompt: bool = True,
                         **special_tokens) -> str:
    """Render a Jinja chat_template as `apply_chat_template` does (bos_token=..., eos_token=...)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=chat_template,
                                            add_generation_prompt=add_generation_prompt, **special_tokens)
    except Exception as e:  # jinja2 errors and raise_exception() in the template itself
        raise ZhloraError(f"could not render the chat_template ({type(e).__name__}: {e})") from None
    return rendered[0]
