"""A memory plan before any weight is read: `zhlora train RECIPE --plan`.

The model is built on the meta device from `config.json` alone (no weights, no memory), LoRA
is put on it through PEFT with the recipe's targets, and the parameters are counted. The peak
of what the PyTorch allocator holds for one training process (on a GPU what
`torch.cuda.max_memory_allocated` reports) is then estimated for LoRA (weights in the compute
dtype) and QLoRA (4-bit NF4 weights), in bytes:

    weights        frozen parameters x bytes per parameter. QLoRA: linear layers at 4 bits plus
                   their quantization constants, one dequantized weight in flight, and every
                   other parameter (embeddings, norms, the output layer) in fp32, because PEFT's
                   `prepare_model_for_kbit_training` upcasts all fp16/bf16 parameters that are
                   not 4-bit
    adapter        trainable parameters x 16: fp32 weight, fp32 gradient, AdamW's two fp32
                   moments (PEFT keeps adapters in fp32 over a bf16/fp16 base)
    activations    what autograd keeps for the backward pass (`layer_activation_bytes` per
                   token and layer), at batch x cutoff_len tokens per step (packed rows are
                   full; padding-free and padded batches hold at most that many), plus the
                   final norm and the gradient flowing between layers. Without gradient
                   checkpointing every layer's activations are kept; with it (always on for
                   QLoRA, as training turns it on) each checkpointed layer's input, and one
                   layer's activations while it is recomputed (the final layer is not
                   checkpointed under the label-only loss; `checkpoint_every` N keeps the
                   others' activations whole: train/checkpointing.py)
    logits         with `label_only_loss` (the default) the head and the cross-entropy run only
                   at label positions, in chunks of about `loss.CHUNK_ELEMENTS` logits: one
                   chunk's fp32 logits and their gradient/temporary (8 bytes a logit), plus the
                   gathered hidden states of the label tokens and their gradient. The plan
                   assumes every position is a label (an upper bound); without
                   `label_only_loss`: all positions' logits, their fp32 upcast and gradient

Checked against the live-tensor peak of real CPU runs (fp32) in bench/plan_accuracy.py
(BENCHMARKS.md, "Memory plan"). Not counted: the CUDA context and allocator slack (about
0.5-1 GiB beyond `max_memory_allocated`; `fits` keeps 1 GiB and 10% aside for them), and
ZeRO/FSDP sharding (the plan is for one process holding the whole model).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from zhlora.errors import ZhloraError
from zhlora.families import family_for_config, read_config
from zhlora.train.config import TrainConfig
from zhlora.train.packed_attention import supports_segments

GiB = 1024 ** 3
# NF4 packs two weights a byte; each block of 64 weights has an absmax constant, itself
# quantized to 8 bits with one fp32 constant per 256 blocks (double quantization, QLoRA's
# setting): 0.5 + 1/64 + 4/(64*256) bytes per weight. Without double quantization: 0.5625.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
ADAPTER_BYTES = 16       # fp32 weight + fp32 grad + AdamW exp_avg + exp_avg_sq
HEADROOM_BYTES = 1 * GiB  # CUDA context, allocator slack


@dataclass(frozen=True)
class Shape:
    """What the estimate needs from the model (counts in parameters, sizes in elements)."""
    total: int          # parameters of the base model
    trainable: int      # LoRA (and modules_to_save) parameters the recipe trains
    quantizable: int    # parameters of the linear layers bitsandbytes would quantize
    largest_linear: int  # elements of the largest quantized weight (dequantized per matmul)
    layers: int
    hidden: int
    vocab: int
    attn_out: int       # q + k + v projection outputs per token
    ffn: int            # MLP inner size
    gated: bool         # SwiGLU-style MLP (two inner projections)
    lora_inputs: int    # sum of in_features of the LoRA-wrapped linears in one layer
    lora_ranks: int = 0  # sum of the ranks of the LoRA-wrapped linears in one layer (A's outputs)
    lora_shared_inputs: int = 0  # elements of the distinct inputs of the wrapped linears (q, k, v
    #                              share the attention norm's output, gate and up the MLP norm's)


@dataclass(frozen=True)
class Estimate:
    """Estimated peak memory of one training process, in bytes."""
    method: str
    weights: float
    adapter: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.weights + self.adapter + self.activations + self.logits


def meta_model(model_dir: str | Path):
    """The model of `model_dir/config.json` on the meta device: shapes, no storage."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import zhlora  # noqa: F401  (registers the native ChatGLM classes)
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001  (config validation raises many types, hub's strict dataclasses too)
        raise ZhloraError(f"{model_dir}/config.json: cannot build the model from it ({type(e).__name__}: "
                          f"{e}); zhlora plans for the families listed by `zhlora train --help`") from None


def with_lora(model, family, cfg: TrainConfig):
    """PEFT's LoRA on the meta model, with the recipe's targets (checked like training does)."""
    from zhlora.train.lora import apply_lora, lora_config

    with torch.device("meta"):
        return apply_lora(model, lora_config(family, model, cfg.lora))


def decoder_layer(model) -> torch.nn.Module:
    """The first block of the longest ModuleList: the decoder layers in every family."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not lists:
        raise ZhloraError(f"{type(model).__name__}: no decoder layers found; cannot plan for it")
    return max(lists, key=len)[0]


def read_shape(base) -> Shape:
    """Sizes of `base`, a meta model without LoRA (trainable counts are filled in later)."""
    hidden = base.get_input_embeddings().embedding_dim
    head = base.get_output_embeddings()
    layer = decoder_layer(base)
    lins = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    down = [m for m in lins if m.out_features == hidden and m.in_features != hidden]
    ffn = down[0].in_features if down else 4 * hidden
    mlp_in = [m for m in lins if m.in_features == hidden and m.out_features in (ffn, 2 * ffn)]
    attn = [m for m in lins if m.in_features == hidden and m not in mlp_in]
    quant = [m for m in base.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    return Shape(total=sum(p.numel() for p in base.parameters()), trainable=0,
                 quantizable=sum(m.weight.numel() for m in quant),
                 largest_linear=max((m.weight.numel() for m in quant), default=0),
                 layers=len(max((m for m in base.modules() if isinstance(m, torch.nn.ModuleList)), key=len)),
                 hidden=hidden, vocab=base.get_input_embeddings().num_embeddings,
                 attn_out=sum(m.out_features for m in attn) - hidden,  # minus the output projection
                 ffn=ffn, gated=sum(m.out_features for m in mlp_in) >= 2 * ffn, lora_inputs=0)


def with_trainable(s: Shape, peft_model) -> Shape:
    """`s` with the trainable count and LoRA-wrapped inputs of `peft_model` (built on it)."""
    wrapped = [m for m in decoder_layer(peft_model).modules()
               if hasattr(m, "lora_A") and isinstance(getattr(m, "base_layer", None), torch.nn.Linear)]
    return dataclasses.replace(s, trainable=sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
                               lora_inputs=sum(m.base_layer.in_features for m in wrapped),
                               lora_ranks=sum(a.out_features for m in wrapped for a in m.lora_A.values()),
                               lora_shared_inputs=shared_inputs(decoder_layer(peft_model), wrapped, s))


def shared_inputs(layer, wrapped, s: Shape) -> int:
    """Elements per token of the distinct tensors the wrapped linears of `layer` read. In each
    block (attention, MLP) the last linear writing `hidden` (o_proj / dense, down_proj /
    dense_4h_to_h) reads its own input; the block's other linears (q, k, v; gate, up) share one."""
    groups: dict[tuple, int] = {}
    for block in layer.children():
        lins = [m for n, m in block.named_modules() if isinstance(_base(m), torch.nn.Linear)
                and "lora_" not in n and "base_layer" not in n]
        outs = [m for m in lins if _base(m).out_features == s.hidden]
        for m in lins:
            if m in wrapped:  # the output projection on its own, the others on one shared input
                role = "own" if outs and m is outs[-1] else "shared"
                groups[(id(block), role)] = _base(m).in_features
    return sum(groups.values())


def _base(m):
    return getattr(m, "base_layer", m)


def layer_activation_bytes(s: Shape, lora_dropout: float, dtype_bytes: int) -> float:
    """Bytes autograd keeps per token for one decoder layer with a frozen base and LoRA on top
    (pre-norm block; fused attention keeping q, k, v, its output and a log-sum-exp, no T x T
    scores, as sdpa's flash/memory-efficient kernels and zhlora's per-sample packed attention
    do). A frozen linear keeps nothing of its input: only LoRA's A does, so a linear's input
    is counted once per group of wrapped linears that read the same tensor (fp32), or once per
    wrapped linear in bf16/fp16, where PEFT casts each input to its fp32 adapter and autocast
    casts it back, a copy each. Terms: the 2 norms keep their input (in bf16/fp16 an fp32
    copy of it, as they upcast), q, k, v and the attention output (attn_out + h); MLP: gate, up, act(gate) (3 x ffn;
    ungated: the inner output); the wrapped inputs; each A's output (r). With dropout, each
    wrapped linear keeps its dropout output and mask instead of the shared input."""
    norms = 2 * s.hidden * 4 if dtype_bytes < 4 else 2 * s.hidden * dtype_bytes
    mlp = (3 if s.gated else 1) * s.ffn
    if lora_dropout > 0:
        lora_in = s.lora_inputs * (dtype_bytes + 1)
    else:
        lora_in = (s.lora_inputs if dtype_bytes < 4 else s.lora_shared_inputs) * dtype_bytes
    return norms + (s.attn_out + s.hidden + mlp + s.lora_ranks) * dtype_bytes + lora_in


def activation_bytes(s: Shape, tokens: int, cfg: TrainConfig, dtype_bytes: int,
                     checkpointing: bool | None = None, residual_bytes: int | None = None) -> float:
    """Activations of the whole decoder for `tokens` tokens per step (logits apart):
    without checkpointing all layers' activations; with it each checkpointed layer's input (in
    `residual_bytes`, the residual stream's dtype) and the most full layers alive at once
    (`checkpointing.peak_layers`: one recomputed layer, the final layer kept under the
    label-only loss, the others with checkpoint_every > 1); both plus the final norm's input
    and output and the gradient between layers (2h each)."""
    from zhlora.train.checkpointing import layer_flags, peak_layers

    ckpt = cfg.gradient_checkpointing if checkpointing is None else checkpointing
    per_layer = layer_activation_bytes(s, cfg.lora_dropout, dtype_bytes)
    resid = residual_bytes or dtype_bytes
    # the layers train/checkpointing.py checkpoints (every checkpoint_every-th, the final
    # one only with full logits); none without checkpointing
    flags = layer_flags(s.layers, cfg.checkpoint_every, final=not cfg.label_only_loss) if ckpt else [False] * s.layers
    kept = sum(flags) * s.hidden * resid + peak_layers(flags) * per_layer
    return tokens * (kept + 4 * s.hidden * resid)  # final norm in and out, gradient in flight


def loss_chunk_rows(vocab: int) -> int:
    """Rows per chunk of the label-only loss (as `loss.chunk_rows` computes them)."""
    from zhlora.train.loss import CHUNK_ELEMENTS

    return max(16, CHUNK_ELEMENTS // max(vocab, 1))


def logits_bytes(s: Shape, tokens: int, dtype_bytes: int, label_only: bool = True,
                 label_tokens: int | None = None) -> float:
    """The head and the loss. Label-only (chunked): one chunk of fp32 logits with its
    gradient/temporary (8 bytes a logit) and the label tokens' hidden states and their
    gradient; `label_tokens` defaults to every position. Otherwise: all positions' logits in
    the compute dtype, their fp32 upcast and the fp32 log-softmax gradient."""
    if not label_only:
        return tokens * s.vocab * (dtype_bytes + 4 + 4)
    n = tokens if label_tokens is None else min(label_tokens, tokens)
    return min(n, loss_chunk_rows(s.vocab)) * s.vocab * 8 + 2 * n * s.hidden * dtype_bytes


def pass_tokens(cfg: TrainConfig, padding_free: bool) -> int:
    """Tokens of one forward/backward: batch x cutoff_len, or with padding-free batches and
    `pass_tokens` N set, under 2N plus one sample (passes are cut at sample starts). Unset, a
    GPU run does not split (train/trainer.py)."""
    tokens = cfg.batch_size * cfg.cutoff_len
    if padding_free and cfg.pass_tokens:
        return min(tokens, 2 * cfg.pass_tokens + cfg.cutoff_len)
    return tokens


def estimate(s: Shape, cfg: TrainConfig, dtype_bytes: int, quantized: bool,
             label_tokens: int | None = None, padding_free: bool = False) -> Estimate:
    """Peak memory of one process for LoRA (`quantized=False`) or QLoRA, in bytes. QLoRA
    trains with gradient checkpointing whatever the recipe says (as `train` does), and in
    bf16/fp16 its non-quantized parameters and so the residual stream are fp32 (PEFT's
    k-bit preparation). `label_tokens`: label positions per step (default: all);
    `padding_free`: the model runs padding-free batches, so `pass_tokens` applies."""
    tokens = pass_tokens(cfg, padding_free)
    ckpt, resid = cfg.gradient_checkpointing, dtype_bytes
    if quantized:  # + one dequantized weight in flight during each matmul
        upcast = max(dtype_bytes, 4)
        weights = (s.quantizable * NF4_BYTES + (s.total - s.quantizable) * upcast
                   + s.largest_linear * dtype_bytes)
        method, ckpt, resid = "QLoRA (4-bit NF4)", True, upcast
    else:
        weights, method = s.total * dtype_bytes, f"LoRA ({_DTYPE_NAMES[dtype_bytes]})"
    return Estimate(method, weights, s.trainable * ADAPTER_BYTES,
                    activation_bytes(s, tokens, cfg, dtype_bytes, ckpt, resid),
                    logits_bytes(s, tokens, dtype_bytes, cfg.label_only_loss, label_tokens))


_DTYPE_NAMES = {2: "bf16", 4: "fp32"}


def plan_dtype_bytes(cfg: TrainConfig) -> int:
    """Bytes per weight/activation of the run the plan is for: the recipe's dtype; `auto` plans
    for a GPU (bf16), as CPU runs are for smoke tests."""
    name = (cfg.dtype or "auto").lower()
    return 4 if name in ("float32", "fp32") else 2


def visible_gpus() -> list[tuple[str, int]]:
    """(name, total bytes) of each GPU torch can see."""
    if not torch.cuda.is_available():
        return []
    return [(torch.cuda.get_device_properties(i).name, torch.cuda.get_device_properties(i).total_memory)
            for i in range(torch.cuda.device_count())]


def fits(est: Estimate, total_bytes: int) -> bool:
    """Leaves 10% and HEADROOM_BYTES for what the estimate does not count."""
    return est.total * 1.1 + HEADROOM_BYTES <= total_bytes


def build_plan(cfg: TrainConfig) -> tuple[Shape, list[Estimate]]:
    """Meta model, LoRA, counts and the LoRA and QLoRA estimates for a recipe."""
    family = family_for_config(read_config(cfg.model), f"{cfg.model}/config.json")
    base = meta_model(cfg.model)
    shape = read_shape(base)
    shape = with_trainable(shape, with_lora(base, family, cfg))
    b = plan_dtype_bytes(cfg)
    flat = cfg.padding_free and supports_segments(base)
    return shape, [estimate(shape, cfg, b, quantized=False, padding_free=flat),
                   estimate(shape, cfg, b, quantized=True, padding_free=flat)]


def format_plan(cfg: TrainConfig, shape: Shape, ests: list[Estimate], gpus) -> str:
    """The table `zhlora train --plan` prints."""
    tokens = cfg.batch_size * cfg.cutoff_len
    lines = [f"memory plan for {cfg.model} (from config.json; no weights read)",
             f"  parameters: {shape.total:,} ({shape.total / 1e9:.2f}B); trainable (LoRA r={cfg.lora_r}): "
             f"{shape.trainable:,} ({100 * shape.trainable / shape.total:.3f}%)",
             f"  per step and process: batch_size {cfg.batch_size} x cutoff_len {cfg.cutoff_len} = "
             f"{tokens:,} tokens, packing {'on' if cfg.packing else 'off'}, gradient checkpointing "
             f"{'on' if cfg.gradient_checkpointing else 'off'}"
             + (f", padding-free passes of under {2 * cfg.pass_tokens:,} tokens (+ one sample)" if cfg.pass_tokens else ""),
             f"  {'GiB':<28}" + "".join(f"{e.method:>20}" for e in ests)]
    for label, attr in (("weights", "weights"), ("LoRA weights+grads+AdamW", "adapter"),
                        ("activations", "activations"), ("logits and loss", "logits"),
                        ("estimated peak", "total")):
        lines.append(f"  {label:<28}" + "".join(f"{getattr(e, attr) / GiB:>20.2f}" for e in ests))
    lines += fit_lines(ests, gpus)
    lines.append("  QLoRA needs quantization=4bit and bitsandbytes and trains with gradient checkpointing "
                 "(planned so); for LoRA, gradient_checkpointing=true cuts activations to each layer's "
                 "input plus one layer's worth")
    return "\n".join(lines)


def fit_lines(ests: list[Estimate], gpus) -> list[str]:
    if not gpus:
        return ["  GPUs: none visible (torch.cuda.is_available() is False); compare the estimate "
                "with your GPU's memory (keep ~1 GiB for the CUDA context)"]
    return [f"  GPU {i} {name} ({total / GiB:.0f} GiB): "
            + ", ".join(f"{e.method} {'fits' if fits(e, total) else 'does NOT fit'}" for e in ests)
            for i, (name, total) in enumerate(gpus)]


def print_plan(cfg: TrainConfig) -> None:
    """`zhlora train RECIPE --plan`."""
    shape, ests = build_plan(cfg)
    print(format_plan(cfg, shape, ests, visible_gpus()))
