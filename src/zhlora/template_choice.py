"""Which template a model folder was trained with: `template_for_model` (re-exported by
`zhlora.templates`), the one function train, chat, predict, serve, webui, data check and gec
eval use.

Order: an explicit `template=` wins; a merged model's `zhlora_merged.json`; the folder's own
chat_template (tokenizer_config.json or chat_template.jinja) when it renders probe
conversations exactly as one of the family's templates does (this is what tells Qwen2 from
Qwen2.5: same config, different default system prompt); else the family's default for the
config (families.py). The choice comes with the reason, for the user to read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from zhlora.errors import ZhloraError

_PROBES = [  # conversations ending with a user turn: the generation prompt is what must match
    [{"role": "user", "content": "你好"}],
    [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "改正：我门去公园"},
     {"role": "assistant", "content": "我们去公园。"}, {"role": "user", "content": "Why?"}],
    [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}],
]


@dataclass(frozen=True)
class TemplateChoice:
    name: str
    reason: str

    @property
    def template(self):
        from zhlora.templates import get_template

        return get_template(self.name)

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def template_for_model(model_dir: str | Path, template: str | None = None) -> TemplateChoice:
    """The chat template for a model folder, and why (see the module docstring)."""
    from zhlora.families import family_for_config, read_config
    from zhlora.templates import get_template

    if template:
        get_template(template)  # unknown names fail here, with the list of known ones
        return TemplateChoice(template, "template= given")
    folder = Path(model_dir)
    merged = _json(folder / "zhlora_merged.json").get("template")
    if merged:
        return TemplateChoice(merged, "recorded in zhlora_merged.json by zhlora merge")
    config = read_config(folder)
    family = family_for_config(config, str(folder))
    default = family.default_template(config)
    jinja, where = folder_chat_template(folder)
    if jinja is None:
        return TemplateChoice(default, f"family {family.name}'s default for this config; the folder has "
                                       "no chat_template")
    if jinja.startswith("{#- zhlora template '"):
        name = jinja.split("'")[1]
        return TemplateChoice(name, f"{where} was written by zhlora for template {name}")
    specials = _special_strings(folder)
    cands = [default] + [n for n in family.templates if n != default]
    for name in cands:
        if renders_like(jinja, name, specials):
            return TemplateChoice(name, f"{where} renders prompts exactly as zhlora's {name}")
    return TemplateChoice(default, f"family {family.name}'s default for this config; {where} renders "
                                   f"like none of {', '.join(cands)} (pass template=... to choose)")


def folder_chat_template(folder: Path) -> tuple[str | None, str]:
    """(Jinja, where it was found) of a folder: chat_template.jinja, else tokenizer_config.json."""
    f = folder / "chat_template.jinja"
    if f.is_file():
        return f.read_text(encoding="utf-8"), "its chat_template.jinja"
    value = _json(folder / "tokenizer_config.json").get("chat_template")
    if isinstance(value, list):  # named templates: [{"name": "default", "template": ...}, ...]
        value = next((v.get("template") for v in value if v.get("name") == "default"), None)
    return (value, "its tokenizer_config.json chat_template") if isinstance(value, str) else (None, "")


def renders_like(jinja: str, name: str, specials: dict) -> bool:
    """True when `jinja` renders every probe's generation prompt as template `name` does."""
    from zhlora.chat_jinja import chat_template_jinja, render_chat_template

    ours = chat_template_jinja(name)
    try:
        return all(render_chat_template(jinja, p, True, **specials) == render_chat_template(ours, p, True, **specials)
                   for p in _PROBES)
    except ZhloraError:  # the folder's template refuses a probe (e.g. no system role)
        return False


def _special_strings(folder: Path) -> dict:
    cfg = _json(folder / "tokenizer_config.json")
    out = {}
    for key in ("bos_token", "eos_token"):
        v = cfg.get(key)
        out[key] = (v.get("content") if isinstance(v, dict) else v) or ""
    return out


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ZhloraError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    return data if isinstance(data, dict) else {}
