"""zhlora.train.checkpointing: gradient checkpointing without the input-embedding hook and
without the final layer, `checkpoint_every`. Loss and gradients equal training without
checkpointing (fp32, 1e-5) for every family; the layers meant to be recomputed really run twice
per step and the others once."""
from __future__ import annotations

import pytest
import torch

from zhlora.errors import ConfigError
from zhlora.families import family_for_config, read_config
from zhlora.train.checkpointing import checkpointed_layers, enable_checkpointing, layer_flags, peak_layers
from zhlora.train.config import LoraSettings, load_config
from zhlora.train.loss import capture_head_input, label_only_loss, output_head

from test_train_loss import FAMILIES, _batch, _grads, make_bases
from test_train_loss import _model as _loss_model


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict:
    return make_bases(tmp_path_factory.mktemp("ckpt_bases"), layers=4)


def _model(path, family, gc: bool, train_head: bool):
    torch.manual_seed(1)            # the same LoRA A draw for the runs compared
    return _loss_model(path, family, gc, train_head)


def _decoder_layers(model) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def _step(model, batch) -> tuple[float, dict, list[int]]:
    """One label-only loss + backward; -> loss, gradients, forward calls of each layer's
    first child module (inside the checkpointed forward: 2 when the layer is recomputed)."""
    calls = [0] * len(_decoder_layers(model))
    hooks = [next(layer.children()).register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, layer in enumerate(_decoder_layers(model))]
    model.zero_grad()
    head = output_head(model)
    with capture_head_input(head) as seen:
        model(**{k: v for k, v in batch.items() if k != "labels"})
    loss = label_only_loss(seen[-1], batch["labels"], head)
    loss.backward()
    for h in hooks:
        h.remove()
    return loss.item(), _grads(model), calls


@pytest.mark.parametrize("name", FAMILIES)
def test_checkpointing_equals_no_checkpointing(bases, name):
    path = bases[name]
    family = family_for_config(read_config(path), path)
    packed = family.packing
    batch = _batch(path, family, packed=packed)
    ref_loss, ref_grads, ref_calls = _step(_model(path, family, gc=False, train_head=False), batch)
    model = _model(path, family, gc=True, train_head=False)
    n = len(_decoder_layers(model))
    assert n >= 2 and checkpointed_layers(model) == [True] * (n - 1) + [False]
    loss, grads, calls = _step(model, batch)
    assert ref_calls == [1] * n
    assert calls == [2] * (n - 1) + [1]                 # recomputed: all but the final layer
    assert loss == pytest.approx(ref_loss, abs=1e-5 * max(1.0, ref_loss))
    assert grads.keys() == ref_grads.keys()
    for k, g in grads.items():
        assert (g - ref_grads[k]).abs().max().item() <= 1e-5 * max(1.0, ref_grads[k].abs().max().item()), k
    assert any(g.abs().max() > 0 for g in grads.values())


def test_no_input_gradient_hook_and_checkpoint_every(bases):
    from zhlora.models.loading import load_model

    path = bases["llama"]
    model = load_model(path, dtype="float32").requires_grad_(False)   # frozen, as under LoRA
    enable_checkpointing(model)
    ids = torch.tensor([[1, 2, 3]])
    assert not model.get_input_embeddings()(ids).requires_grad   # nothing trains the first layer's input
    assert checkpointed_layers(model) == [True, True, True, False]
    assert layer_flags(4) == checkpointed_layers(model)
    enable_checkpointing(model, every=2)
    assert checkpointed_layers(model) == [True, False, True, False] == layer_flags(4, every=2)
    enable_checkpointing(model, every=3)
    assert checkpointed_layers(model) == [True, False, False, False] == layer_flags(4, every=3)
    enable_checkpointing(model, final=True)
    assert checkpointed_layers(model) == [True, True, True, True] == layer_flags(4, final=True)
    assert model.config.use_cache is False


def test_checkpoint_every_two_is_exact_and_recomputes_half(bases):
    from zhlora.train.lora import apply_lora, lora_config

    path = bases["llama"]
    family = family_for_config(read_config(path), path)
    batch = _batch(path, family, packed=True)
    ref_loss, ref_grads, _ = _step(_model(path, family, gc=False, train_head=False), batch)
    from zhlora.models.loading import load_model

    model = load_model(path, dtype="float32")
    torch.manual_seed(1)
    model = apply_lora(model, lora_config(family, model, LoraSettings(r=4, alpha=8, dropout=0.0, target="all")),
                       gradient_checkpointing=True, checkpoint_every=2).train()
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    loss, grads, calls = _step(model, batch)
    assert calls == [2, 1, 2, 1]
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    for k, g in grads.items():
        assert (g - ref_grads[k]).abs().max().item() <= 1e-5 * max(1.0, ref_grads[k].abs().max().item()), k


def test_checkpoint_every_must_be_positive_and_with_checkpointing(tmp_path):
    base = [f"model={tmp_path}", f"data={tmp_path / 'x.jsonl'}"]
    with pytest.raises(ConfigError, match="checkpoint_every"):
        load_config(None, [*base, "checkpoint_every=0", "gradient_checkpointing=true"])
    with pytest.raises(ConfigError, match="only applies with gradient_checkpointing"):
        load_config(None, [*base, "checkpoint_every=2"])
    assert load_config(None, [*base, "checkpoint_every=2", "gradient_checkpointing=true"]).checkpoint_every == 2


def test_peak_layers_counts_the_full_layers_alive_at_once():
    assert peak_layers([False] * 4) == 4                  # no checkpointing: all layers
    assert peak_layers([True] * 4) == 1                   # one recomputed at a time
    assert peak_layers([True, True, True, False]) == 1    # the final layer is freed before the next recompute
    assert peak_layers([True, False, True, False]) == 2   # forward end: layers 1 and 3
    assert peak_layers([True, False, False, True]) == 3   # recomputing layer 3 with 1 and 2 kept
