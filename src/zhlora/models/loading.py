"""Thin wrappers over transformers' loading, so API churn hits one place.

Security defaults: safetensors; a folder that only has pickled `.bin` weights is refused
unless the caller passes `allow_bin=True` (transformers then loads it with
`torch.load(weights_only=True)`); never `trust_remote_code`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from zhlora.errors import ZhloraError
from zhlora.families import read_config
from zhlora.models import device as devices
from zhlora.models import quant


def weight_files(model_dir: str | Path) -> tuple[str, list[Path]]:
    """-> ("safetensors" | "bin", files). Raises when the folder has no weights."""
    d = Path(model_dir)
    st = sorted(d.glob("*.safetensors"))
    if st:
        return "safetensors", st
    bins = sorted(p for p in d.glob("*.bin") if p.name != "training_args.bin")
    if bins:
        return "bin", bins
    raise ZhloraError(f"{d}: no *.safetensors or *.bin weights found")


def check_weights_allowed(model_dir: str | Path, allow_bin: bool) -> None:
    kind, files = weight_files(model_dir)
    if kind == "bin" and not allow_bin:
        raise ZhloraError(
            f"{model_dir}: only pickled .bin weights ({files[0].name}...). zhlora loads safetensors "
            "by default; pass allow_bin=true / --allow-bin to load them with "
            "torch.load(weights_only=True), or convert them to safetensors first")


def load_tokenizer(path: str | Path):
    """The tokenizer of a model folder, or of a llama.cpp vocabulary file (`*.gguf`).

    SentencePiece vocabularies converted to `tokenizers` get SentencePiece's own behaviour back
    (transformers 5 changes both; measured on LLaMA's vocabulary against llama.cpp's vectors):
    - every piece of text between special tokens starts with a word-start mark, also when it
      begins with a space (transformers drops the mark there: " Hello" [29871, 15043] -> [15043]);
      a folder whose tokenizer_config says `"legacy": false` keeps transformers' rule;
    - a BPE `tokenizer.model` (no tokenizer.json) merges by piece score, as SentencePiece does
      (transformers 5 ranks merges by piece id: " Hello" -> [259, 10994], "▁▁" + "Hello").
    """
    from transformers import AutoTokenizer

    p = Path(path)
    try:
        if p.suffix == ".gguf":
            tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        else:
            tok = _generic_fast_tokenizer(path) or AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ZhloraError(f"{path}: could not load a tokenizer ({e}). The folder needs "
                          "tokenizer.json or tokenizer.model plus tokenizer_config.json") from None
    if p.is_dir():
        _sentencepiece_merges_by_score(tok, p)
    if not _says_not_legacy(p):
        _sentencepiece_prefix_rule(tok)
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


def _says_not_legacy(path: Path) -> bool:
    import json

    cfg = path / "tokenizer_config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("legacy") is False
    except json.JSONDecodeError:
        return False


def _sentencepiece_merges_by_score(tok, folder: Path) -> None:
    """Rebuild the BPE merges of a tokenizer converted from a SentencePiece BPE model, ranked by
    the pieces' scores (transformers' own `generate_merges` with scores)."""
    sp_file = folder / "tokenizer.model"
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or (folder / "tokenizer.json").is_file() or not sp_file.is_file():
        return
    from sentencepiece import sentencepiece_model_pb2 as spm_pb
    from tokenizers import models
    from transformers.tokenization_utils_base import generate_merges

    if not isinstance(backend.model, models.BPE):
        return
    proto = spm_pb.ModelProto()
    proto.ParseFromString(sp_file.read_bytes())
    if proto.trainer_spec.model_type != spm_pb.TrainerSpec.BPE:
        return
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    merges = generate_merges(vocab, {piece.piece: piece.score for piece in proto.pieces})
    unk = proto.pieces[proto.trainer_spec.unk_id].piece if proto.trainer_spec.unk_id >= 0 else None
    backend.model = models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                               byte_fallback=proto.trainer_spec.byte_fallback)


def _sentencepiece_prefix_rule(tok) -> None:
    """Metaspace pre-tokenizer -> Prepend + Replace normalizer (SentencePiece's add_dummy_prefix)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None:
        return
    from tokenizers import normalizers, pre_tokenizers

    pre = backend.pre_tokenizer
    if not isinstance(pre, pre_tokenizers.Metaspace) or pre.prepend_scheme == "never" or pre.split:
        return
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(pre.replacement),
                                               normalizers.Replace(" ", pre.replacement)])
    backend.pre_tokenizer = None


def _generic_fast_tokenizer(path):
    """A folder whose tokenizer_config names the generic fast class gets exactly that class.

    transformers 5's AutoTokenizer prefers the model type's own class (e.g. Qwen2Tokenizer,
    which rebuilds the pipeline from vocab+merges) over the `tokenizer.json` the folder holds.
    """
    import json

    cfg_path = Path(path) / "tokenizer_config.json"
    if not (Path(path) / "tokenizer.json").is_file() or not cfg_path.is_file():
        return None
    cls = json.loads(cfg_path.read_text(encoding="utf-8")).get("tokenizer_class")
    if cls not in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return None
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))


def load_model(path: str | Path, dtype: str | torch.dtype | None = "auto", device: str | None = "auto",
               allow_bin: bool = False, attn_implementation: str | None = "sdpa",
               quantization: str | None = None, place: bool = True):
    """Load a causal LM from a local folder (never the hub, never remote code).

    `device`/`dtype` go through `zhlora.models.device.decide` (auto: CUDA when available, bf16/
    fp16/fp32 to match). `quantization` 4bit/8bit loads the linear layers with bitsandbytes,
    straight onto the device; `place=False` leaves an unquantized model on the CPU (the Trainer
    places it)."""
    read_config(path)  # clear error for a wrong folder
    check_weights_allowed(path, allow_bin)
    dev, td = devices.decide(device, dtype)
    kwargs = {"dtype": td, "local_files_only": True}
    qcfg = quant.quantization_config(quantization, td)
    if qcfg is not None:
        kwargs.update(quantization_config=qcfg, device_map={"": dev})
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = _from_pretrained(path, kwargs)
    if place and qcfg is None:
        model.to(dev)
    return model


def _from_pretrained(path, kwargs: dict):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        try:
            return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        except ValueError as e:
            if "attn_implementation" not in str(e) and "sdpa" not in str(e).lower():
                raise
            kwargs.pop("attn_implementation")
            return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (ValueError, OSError, RuntimeError, SafetensorError) as e:
        raise ZhloraError(f"{path}: could not load the model weights ({type(e).__name__}: {e}). Check that "
                          "the weight files are complete (re-copy or re-download them) and match config.json") from None
