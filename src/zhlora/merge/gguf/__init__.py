"""`zhlora export gguf`: a merged model folder -> one GGUF file that llama.cpp (and Ollama) run.

The pieces: `archs` (which llama.cpp architecture each family maps to: one table),
`vocab` (the tokenizer, in the kind of llama.cpp tokenizer that reproduces zhlora's
tokenization), `tensors` (names, f32/f16/q8_0 storage, streamed data), `llamacpp` (a thin
wrapper over llama-cpp-python, used to prove the file runs).

Tensors are converted one at a time: infos are declared from the safetensors headers, then data
is streamed shard by shard. The file is written to a temporary file next to the target, synced
and renamed when complete, so a failed export leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.families import read_config
from zhlora.merge.base import open_base
from zhlora.merge.gguf.archs import arch_for
from zhlora.merge.gguf.tensors import QTYPES, declare, tensor_plan, write_data
from zhlora.merge.gguf.vocab import read_vocab, write_vocab
from zhlora.outputs import check_output_free


@dataclass
class GGUFInfo:
    path: Path
    arch: str
    tensors: int
    type: str
    bytes: int
    vocab: int
    tokenizer: str
    chat_template: bool


def export_gguf(model_dir, output, qtype: str = "f16", overwrite: bool = False) -> GGUFInfo:
    """Write `model_dir` (a merged Hugging Face folder) as a GGUF file at `output`."""
    import gguf

    model_dir = Path(model_dir)
    _refuse_adapter(model_dir)
    cfg = read_config(model_dir)
    arch = arch_for(cfg, str(model_dir))
    if qtype not in QTYPES:
        raise ZhloraError(f"--type {qtype!r}: use one of {', '.join(QTYPES)}")
    out = check_output_free(output, overwrite).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    base = open_base(model_dir)
    hp = arch.hparams(cfg)
    items = tensor_plan(base, cfg, arch, qtype)
    rows = next(i.shape[0] for i in items if i.dst == "token_embd.weight")
    vocab = read_vocab(model_dir, rows, arch.bpe_pre)
    add_bos, eot = _tokenizer_facts(model_dir, cfg, arch)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch.name)
        _add_metadata(w, hp, qtype, model_dir.name, rows)
        has_template = write_vocab(w, vocab, model_dir, add_bos, eot)
        for item in items:
            declare(w, item)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        write_data(w, base, items, arch, hp)
        w.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return GGUFInfo(out, arch.name, len(items), qtype, out.stat().st_size, rows, vocab.kind, has_template)


def _refuse_adapter(model_dir: Path) -> None:
    if (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file():
        raise ZhloraError(f"{model_dir} is a LoRA adapter folder, not a merged model; merge it first "
                          f"(`zhlora merge --base BASE --adapter {model_dir} --output MERGED`) and export "
                          "MERGED")


def _add_metadata(w, hp, qtype: str, name: str, rows: int) -> None:
    import gguf

    w.add_name(name)
    w.add_context_length(hp.context)
    w.add_embedding_length(hp.embedding)
    w.add_block_count(hp.layers)
    w.add_feed_forward_length(hp.ffn)
    w.add_head_count(hp.heads)
    w.add_head_count_kv(hp.kv_heads)
    w.add_rope_dimension_count(hp.rope_dims)
    w.add_key_length(hp.head_dim)
    w.add_value_length(hp.head_dim)
    w.add_layer_norm_rms_eps(hp.rms_eps)
    w.add_rope_freq_base(hp.rope_base)
    w.add_vocab_size(rows)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype]
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tokenizer_facts(model_dir: Path, cfg: dict, arch) -> tuple[bool | None, list[int]]:
    """(add_bos, end-of-turn ids) as zhlora's tokenizer and the family's chat template have them."""
    from zhlora.families import family_for_config
    from zhlora.models.loading import load_tokenizer
    from zhlora.templates import get_template

    tok = load_tokenizer(model_dir)
    add_bos = arch.add_bos
    if add_bos is None:
        plain = tok("中文", add_special_tokens=False)["input_ids"]
        full = tok("中文")["input_ids"]
        add_bos = tok.bos_token_id is not None and full[:1] == [tok.bos_token_id] and full[1:] == plain
    record = model_dir / "zhlora_merged.json"      # the merge record names the adapter's template
    name = json.loads(record.read_text(encoding="utf-8")).get("template") if record.is_file() else None
    try:
        template = get_template(name or family_for_config(cfg, str(model_dir)).default_template(cfg))
        stops = template.stop_token_ids(tok)
    except ZhloraError:
        stops = []
    return add_bos, [i for i in stops if i != tok.eos_token_id]
