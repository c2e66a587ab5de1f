"""P-Tuning v2 checkpoints of the native ChatGLM models, in THUDM's layout.

A checkpoint folder is what THUDM's `ptuning/main.py` writes, with safetensors for the pickle:

    config.json         the base's config.json with `pre_seq_len` and `prefix_projection` set
    model.safetensors   only the `transformer.prefix_encoder.*` tensors (THUDM's key names):
                        `embedding.weight`, and with the projection `trans.0.*`, `trans.2.*`

(zhlora adds its self-description next to them: zhlora_adapter.json with method "ptuning".)
THUDM's code loads it as: `config.pre_seq_len = N`, `from_pretrained(base, config=config)`, then
the `transformer.prefix_encoder.` keys of the checkpoint into `model.transformer.prefix_encoder`.

A checkpoint is a plug-in: `load_prefix_encoder` builds its encoder for a loaded base, and
`prefix_active(model, encoder)` puts it in the model for a forward / generate and takes it out
after, so one base serves several P-Tuning checkpoints (and PEFT LoRA adapters) in turn.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import torch

from zhlora.errors import ZhloraError
from zhlora.models.chatglm.common import PrefixEncoder
from zhlora.models.chatglm.configuration import glm_spec
from zhlora.runinfo import is_ptuning_folder  # noqa: F401  (the folder test, re-exported)

PREFIX_KEY = "transformer.prefix_encoder."
WEIGHTS = "model.safetensors"
THUDM_WEIGHTS = "pytorch_model.bin"  # what THUDM's own trainer wrote


def trunk(model):
    """The native ChatGLM trunk (`model.transformer`, which holds `prefix_encoder`), under any
    PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    found = getattr(base, "transformer", None)
    if found is None or not hasattr(found, "prefix_encoder"):
        raise ZhloraError(f"P-Tuning v2 needs zhlora's native ChatGLM model (ChatGLM-6B, ChatGLM2/3-6B, GLM-4 "
                          f"in THUDM's chatglm format); this base is a {type(base).__name__}")
    return found


def new_prefix_encoder(model, pre_seq_len: int, projection: bool) -> PrefixEncoder:
    """A freshly initialised encoder for `model`'s architecture, in fp32 on the model's device.
    PyTorch's default init (N(0, 1) embedding), as THUDM's models leave it."""
    spec = dataclasses.replace(glm_spec(model.config), pre_seq_len=int(pre_seq_len),
                               prefix_projection=bool(projection))
    device = next(model.parameters()).device
    return PrefixEncoder(spec).to(device=device, dtype=torch.float32)


def prefix_state_dict(model) -> dict[str, torch.Tensor]:
    """The active prefix encoder's tensors under THUDM's names (`transformer.prefix_encoder.*`)."""
    enc = trunk(model).prefix_encoder
    if enc is None:
        raise ZhloraError("the model has no prefix encoder to save (it was not set up for P-Tuning v2)")
    return {PREFIX_KEY + k: v.detach().cpu().contiguous() for k, v in enc.state_dict().items()}


def save_checkpoint(model, folder, base_dir) -> None:
    """Write config.json (the base's, with pre_seq_len / prefix_projection) and the prefix
    encoder's tensors into `folder`, the layout THUDM's ptuning loader reads."""
    from safetensors.torch import save_file

    from zhlora.families import read_config

    spec = trunk(model).prefix_encoder.spec
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = read_config(base_dir)
    cfg.update(pre_seq_len=spec.pre_seq_len, prefix_projection=spec.prefix_projection)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_file(prefix_state_dict(model), str(folder / WEIGHTS), metadata={"format": "pt"})


def read_checkpoint(folder, allow_bin: bool = False) -> tuple[int, bool, dict[str, torch.Tensor]]:
    """-> (pre_seq_len, prefix_projection, encoder state dict with the prefix stripped)."""
    from zhlora.families import read_config

    folder = Path(folder)
    cfg = read_config(folder)
    if not cfg.get("pre_seq_len"):
        raise ZhloraError(f"{folder}/config.json: no pre_seq_len; not a P-Tuning v2 checkpoint")
    tensors = _read_tensors(folder, allow_bin)
    state = {k[len(PREFIX_KEY):]: v for k, v in tensors.items() if k.startswith(PREFIX_KEY)}
    if not state:
        raise ZhloraError(f"{folder}: no {PREFIX_KEY}* tensors in the weights; not a P-Tuning v2 checkpoint")
    return int(cfg["pre_seq_len"]), bool(cfg.get("prefix_projection")), state


def _read_tensors(folder: Path, allow_bin: bool) -> dict:
    from safetensors.torch import load_file

    if (folder / WEIGHTS).is_file():
        return load_file(str(folder / WEIGHTS))
    if (folder / THUDM_WEIGHTS).is_file():
        if not allow_bin:
            raise ZhloraError(f"{folder / THUDM_WEIGHTS}: pickled weights (THUDM's own P-Tuning checkpoint); "
                              "pass --allow-bin to load them with torch.load(weights_only=True)")
        return torch.load(folder / THUDM_WEIGHTS, map_location="cpu", weights_only=True)
    raise ZhloraError(f"{folder}: no {WEIGHTS} (or {THUDM_WEIGHTS}) with the prefix encoder")


def load_prefix_encoder(model, folder, allow_bin: bool = False) -> PrefixEncoder:
    """The checkpoint's prefix encoder built for the loaded base `model` (fp32, eval, frozen),
    not yet active: pass it to `prefix_active`. Shapes are checked against the base."""
    pre_seq_len, projection, state = read_checkpoint(folder, allow_bin)
    enc = new_prefix_encoder(model, pre_seq_len, projection)
    want = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        raise ZhloraError(f"{folder}: the prefix encoder's tensors {have} do not fit this base, which needs "
                          f"{want} (pre_seq_len={pre_seq_len}, prefix_projection={projection}); pass the "
                          "base model the checkpoint was trained on")
    enc.load_state_dict(state)
    return enc.eval().requires_grad_(False)


@contextlib.contextmanager
def prefix_active(model, encoder: PrefixEncoder | None):
    """Run `model` with `encoder` as its prefix (None: no prefix); the previous one is put back."""
    t = trunk(model)
    before = t.prefix_encoder
    t.prefix_encoder = encoder
    try:
        yield model
    finally:
        t.prefix_encoder = before
