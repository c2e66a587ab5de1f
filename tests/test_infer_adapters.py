"""The adapter naming rule (checked once, for --adapter and Engine.load) and the adapter record."""
from __future__ import annotations

import pytest
from test_infer_fixtures import engine, infer_setup  # noqa: F401

from zhlora.errors import ZhloraError
from zhlora.infer.adapters import check_adapter_name, parse_adapter_specs
from zhlora.infer.engine import Engine


@pytest.mark.parametrize("name", ["base", "BASE", "none"])
def test_infer_reserved_adapter_names_refused(infer_setup, name):
    base, adapters = infer_setup
    with pytest.raises(ZhloraError, match=f"adapter name '{name}' is reserved for the base model"):
        parse_adapter_specs([f"{name}={adapters['gec']}"])
    with pytest.raises(ZhloraError, match="reserved for the base model"):
        Engine.load(base, adapters={name: adapters["gec"]})


@pytest.mark.parametrize("name", ["", "a b", "a:b", "x=y", "-lead"])
def test_infer_bad_adapter_names_refused(name):
    with pytest.raises(ZhloraError, match="not a plain name"):
        check_adapter_name(name, "--adapter")


def test_infer_adapter_specs(tmp_path):
    (tmp_path / "gec-v1.2").mkdir()
    assert parse_adapter_specs([f"{tmp_path}/gec-v1.2", f"语法={tmp_path}"]) == {
        "gec-v1.2": tmp_path / "gec-v1.2", "语法": tmp_path}
    with pytest.raises(ZhloraError, match="used twice"):
        parse_adapter_specs([f"a={tmp_path}", f"a={tmp_path}"])


def test_infer_adapter_record(engine, infer_setup):
    rec = engine.record("gec")
    assert (rec.name, rec.path, rec.template.name) == ("gec", infer_setup[1]["gec"], "alpaca")
    assert rec.meta["base_fingerprint"]["model_type"] == "llama"
    assert engine.record(None).name is None and engine.record(None).path == infer_setup[0]
    d = engine.default_options("gec")
    d.max_new_tokens = 1  # a copy: the record's defaults do not change
    assert engine.default_options("gec").max_new_tokens == rec.defaults.max_new_tokens != 1


def test_infer_served_name_clash_refused(engine):
    from zhlora.infer.server import model_table

    with pytest.raises(ZhloraError, match="--served-model-name 'gec' is also the name of an adapter"):
        model_table(engine, "gec")
