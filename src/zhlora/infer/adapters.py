"""The adapters of one served base: the naming rule, the base's identity, and one record per
adapter (name, folder, metadata, chat template, generation defaults) used end to end.

    specs = parse_adapter_specs(["gec=/runs/gec", "/runs/poem"])   # {"gec": ..., "poem": ...}
    base = BaseModel.read(folder)                                  # config.json read once
    rec = read_adapter("gec", specs["gec"]).bound_to(base)         # template + fingerprint checked

The base model itself is a record too (`base_record`, name None), so the engine looks up a
template or the defaults the same way for both.
"""
from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.infer.options import GenerationOptions

RESERVED_NAMES = ("base", "none")  # `base`/`none` mean the base model (server ids, /adapter none)
_NAME = re.compile(r"\w[\w.\-]*")


def check_adapter_name(name: str, where: str) -> str:
    """The one naming rule: a plain name (letters, digits, `_`, `-`, `.`), not a reserved one."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ZhloraError(f"{where}: adapter name {name!r} is not a plain name; use letters, digits, "
                          "'_', '-' or '.' (write NAME=DIR to choose one)")
    if name.lower() in RESERVED_NAMES:
        raise ZhloraError(f"{where}: the adapter name {name!r} is reserved for the base model; "
                          "choose another name (write NAME=DIR)")
    return name


def parse_adapter_specs(specs) -> dict[str, Path]:
    """`NAME=DIR` or `DIR` (name = the folder's name) -> {name: folder}."""
    out: dict[str, Path] = {}
    for spec in ([specs] if isinstance(specs, str) else specs or []):
        name, sep, path = str(spec).partition("=")
        if not sep:
            name, path = Path(spec).resolve().name, spec
        check_adapter_name(name, f"--adapter {spec}")
        if name in out:
            raise ZhloraError(f"--adapter {spec}: the name {name!r} is used twice; write NAME=DIR")
        out[name] = Path(path)
    return out


@dataclass(frozen=True)
class BaseModel:
    """The base folder with its config.json (read once), family and fingerprint."""

    folder: Path
    config: dict
    family: object
    fingerprint: dict

    @classmethod
    def read(cls, folder: str | Path) -> "BaseModel":
        from zhlora.families import config_fingerprint, family_for_config, read_config

        cfg = read_config(folder)
        return cls(Path(folder), cfg, family_for_config(cfg, str(folder)), config_fingerprint(cfg))

    @functools.cached_property
    def template_choice(self):
        """What the folder says it was trained with, and why (templates.template_for_model)."""
        from zhlora.templates import template_for_model

        return template_for_model(self.folder)

    @property
    def template_name(self) -> str:
        return self.template_choice.name


@dataclass(frozen=True)
class AdapterRecord:
    """One adapter (or the base: name None) as the engine serves it."""

    name: str | None
    path: Path | None
    meta: dict = field(default_factory=dict)
    defaults: GenerationOptions = field(default_factory=GenerationOptions)
    template: object = None  # a ChatTemplate once bound to the base

    @property
    def is_ptuning(self) -> bool:
        """A P-Tuning v2 checkpoint (a prefix encoder, not PEFT weights)."""
        return self.meta.get("method") == "ptuning"

    @property
    def where(self) -> str:
        return f"adapter {self.name!r} ({self.path})"

    def bound_to(self, base: BaseModel, template_override: str | None = None) -> "AdapterRecord":
        """Checked against the base (architecture, vocabulary) and given its chat template:
        `template_override`, else the adapter's metadata `template`, else the family's."""
        from zhlora.templates import get_template

        _check_fingerprint(self, base)
        name = template_override or self.meta.get("template") or base.template_name
        return replace(self, template=get_template(name))


def read_adapter(name: str, path: str | Path, where: str = "--adapter") -> AdapterRecord:
    """The record of an adapter folder, not yet bound to a base."""
    from zhlora.runinfo import ADAPTER_META, read_adapter_meta

    check_adapter_name(name, where)
    path = Path(path)
    if not path.is_dir():
        raise ZhloraError(f"adapter {name!r}: folder {path} does not exist")
    meta = read_adapter_meta(path)
    defaults = GenerationOptions.from_dict(meta.get("generation"), f"{path}/{ADAPTER_META}: generation")
    return AdapterRecord(name, path, meta, defaults)


def base_record(base: BaseModel, template_override: str | None = None) -> AdapterRecord:
    from zhlora.templates import get_template

    return AdapterRecord(None, base.folder, {}, GenerationOptions(),
                         get_template(template_override or base.template_name))


def _check_fingerprint(rec: AdapterRecord, base: BaseModel) -> None:
    """Refuse an adapter trained on another architecture; warn when only the config differs."""
    want, have = rec.meta.get("base_fingerprint"), base.fingerprint
    if not want:
        return
    for key in ("model_type", "vocab_size"):
        if want.get(key) is not None and want.get(key) != have.get(key):
            raise ZhloraError(f"{rec.path}: adapter was trained on a base with {key}={want.get(key)!r} but "
                              f"{base.folder} has {key}={have.get(key)!r}; pass the matching --model")
    if want.get("config_sha256") and want["config_sha256"] != have["config_sha256"]:
        print(f"warning: {rec.path} was trained on a base whose config differs from {base.folder} "
              f"(fingerprint {want['config_sha256']} vs {have['config_sha256']})", file=sys.stderr)
