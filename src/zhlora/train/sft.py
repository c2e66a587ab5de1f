"""Supervised fine-tuning with LoRA (or P-Tuning v2): recipe -> data -> model -> Trainer -> adapter folder.

Read top to bottom: `train` calls `plan_output`, `load_data`, `build_rows`, `build_method`
(`build_model` for LoRA, train/ptuning.py for `method: ptuning`), `make_trainer`, then
`finalize`. The Trainer writes checkpoints into `<output_dir>.partial/`; only a finished run
is renamed to `<output_dir>`, so an output folder is never half-written and `resume=true`
continues from the last checkpoint in the `.partial` folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from zhlora.errors import ZhloraError
from zhlora.families import Family, family_for_config, fingerprint, read_config
from zhlora.models import device as devices
from zhlora.models import quant
from zhlora.models.loading import load_model, load_tokenizer
from zhlora.outputs import replace_dir
from zhlora.runinfo import write_adapter_meta, write_chat_template
from zhlora.templates import template_for_model
from zhlora.train import dataset as ds
from zhlora.train.config import TrainConfig
from zhlora.train.distributed import adapter_state, import_deepspeed, init_deepspeed_comm, quiet_deepspeed
from zhlora.train.lora import apply_lora, lora_config, resize_for_tokenizer, trainable_summary
from zhlora.train.packed_attention import segment_attention, supports_segments


@dataclass
class TrainResult:
    output: Path        # the finished adapter folder
    model: object       # the trained PeftModel, still in memory
    metrics: dict


@dataclass
class Plan:
    output: Path
    partial: Path
    resume_from: str | None


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def say(msg: str) -> None:
    if is_main_process():
        print(msg, flush=True)


def plan_output(cfg: TrainConfig) -> Plan:
    out = Path(cfg.output_dir).resolve()
    partial = out.with_name(out.name + ".partial")
    if out.exists() and not cfg.overwrite:
        raise ZhloraError(f"output_dir {out} already exists; pass overwrite=true to replace it, "
                          "or choose another output_dir")
    resume_from = None
    if partial.exists():
        ckpts = sorted(partial.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        if cfg.resume and ckpts:
            resume_from = str(ckpts[-1])
        elif cfg.resume:
            say(f"resume=true but {partial} has no checkpoint; starting from scratch")
        elif not cfg.overwrite:
            raise ZhloraError(f"{partial} holds an interrupted run; pass resume=true to continue it "
                              "or overwrite=true to start over")
        if resume_from is None and is_main_process():
            shutil.rmtree(partial)
    elif cfg.resume:
        say(f"resume=true but no interrupted run at {partial}; starting from scratch")
    return Plan(out, partial, resume_from)


def load_data(cfg: TrainConfig):
    """-> (conversations, summary dict)."""
    from zhlora.data.readers import read_conversations

    # progress=None: a bar for big files only (a small file's bar would sit at 0% and vanish)
    res = read_conversations(cfg.data, format=cfg.format, skip_bad=cfg.skip_bad,
                             progress=None if is_main_process() else False)
    convs = res.conversations
    if cfg.max_samples:
        convs = convs[: cfg.max_samples]
    for f, fmt in res.formats.items():
        say(f"data: {f}: format {fmt}")
    if res.skipped:
        say(f"data: skipped {res.skipped} bad record(s) (skip_bad=true)")
    if not convs:
        raise ZhloraError(f"no usable records in {', '.join(cfg.data)}")
    summary = {"files": [str(Path(f).resolve()) for f in cfg.data], "formats": res.formats,
               "records": res.records, "skipped": res.skipped, "used": len(convs)}
    return convs, summary


def split_eval(convs: list, ratio: float, seed: int) -> tuple[list, list]:
    if ratio <= 0 or len(convs) < 2:
        if ratio > 0:
            say(f"eval_ratio={ratio}: only {len(convs)} record(s), no eval split")
        return convs, []
    idx = list(range(len(convs)))
    random.Random(seed).shuffle(idx)
    n_eval = min(len(convs) - 1, max(1, int(round(len(convs) * ratio))))
    held = set(idx[:n_eval])
    return [c for i, c in enumerate(convs) if i not in held], [convs[i] for i in sorted(held)]


def build_rows(convs, template, tokenizer, cfg: TrainConfig, family: Family):
    enc, stats = ds.encode_all(convs, template, tokenizer, cfg.cutoff_len, cfg.train_on,
                               progress=is_main_process())
    if not enc:
        raise ZhloraError("every sample lost all its response tokens to truncation; raise cutoff_len")
    if cfg.packing:
        if not family.packing:
            raise ZhloraError(f"packing is not supported for the {family.name} family "
                              f"({family.notes or 'see docs'}); set packing=false")
        rows = ds.pack_rows(enc, cfg.cutoff_len)
    else:
        rows = ds.single_rows(enc)
    return rows, stats


def say_template_cost(convs, template, tokenizer, stats, cutoff_len: int) -> None:
    """What the template costs, before the first step: its tokens per record and what
    cutoff_len cuts (a long English system prompt on a Chinese vocabulary can double a record)."""
    from zhlora.data.stats import overhead_line, prompt_overhead

    if not is_main_process():
        return
    say(f"template {template.name}: adds {overhead_line(prompt_overhead(convs, tokenizer, template))} "
        "beyond the messages' text")
    kept = stats.label_tokens + stats.lost_label_tokens
    pct = 100.0 * stats.lost_label_tokens / kept if kept else 0.0
    say(f"cutoff_len={cutoff_len}: truncates {stats.truncated} of {stats.samples + stats.dropped_no_labels} "
        f"record(s), losing {stats.lost_label_tokens} of {kept} label tokens ({pct:.1f}%)"
        + (f"; {stats.dropped_no_labels} record(s) kept no label token and were dropped"
           if stats.dropped_no_labels else ""))


def build_model(cfg: TrainConfig, family: Family, tokenizer):
    from transformers import set_seed

    model = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, allow_bin=cfg.allow_bin,
                       quantization=cfg.quantization, place=False)  # the Trainer places it
    # seeded after loading: LoRA's A matrices and resized embeddings are drawn from here on,
    # the same whether or not the load (ZeRO-3's partitioned init) consumed random numbers
    set_seed(cfg.seed)
    resized = resize_for_tokenizer(model, tokenizer)
    lora, grown = cfg.lora, ()
    if resized:
        grown = tuple(m for m in family.embedding_modules if m not in lora.modules_to_save)
        say(f"vocabulary: tokenizer has {resized['to']} tokens, model {resized['from']}: resized the "
            f"embeddings and training {', '.join([*lora.modules_to_save, *grown])} whole (PEFT modules_to_save)")
    lcfg = lora_config(family, model, lora, grown)
    kbit = quant.normalize(cfg.quantization) is not None
    if kbit:
        say(f"quantization: {cfg.quantization} base (bitsandbytes), LoRA trained on top; gradient checkpointing on")
    model = apply_lora(model, lcfg, cfg.gradient_checkpointing or kbit, kbit=kbit,
                       checkpoint_every=cfg.checkpoint_every, checkpoint_final=not cfg.label_only_loss)
    say(f"{'DoRA' if lora.use_dora else 'LoRA'} r={lora.r} alpha={lora.alpha} on {sorted(lcfg.target_modules)}: "
        f"{trainable_summary(model)}")
    return model, resized


@dataclass
class Method:
    """What the training method contributes: the model to train, the vocabulary resize (LoRA),
    the Trainer class and how the finished weights are written (None: PEFT's save_pretrained)."""
    model: object
    resized: dict | None = None
    trainer_class: type | None = None
    save_weights: Callable | None = None


def build_method(cfg: TrainConfig, family: Family, tokenizer) -> Method:
    if cfg.method == "ptuning":
        from zhlora.train import ptuning

        return Method(ptuning.build_model(cfg, family, tokenizer, say), None, ptuning.trainer_class(cfg),
                      lambda trainer, folder: ptuning.save_weights(trainer, folder, cfg))
    return Method(*build_model(cfg, family, tokenizer))


def training_arguments(cfg: TrainConfig, plan: Plan, has_eval: bool):
    from transformers import TrainingArguments

    quiet_deepspeed()  # transformers and accelerate import DeepSpeed when it is installed
    device, dtype = devices.decide(cfg.device, cfg.dtype)
    on_gpu = device.type == "cuda"
    eval_steps = cfg.eval_steps or (cfg.save_steps if cfg.save_steps > 0 else None)
    report = [] if cfg.report_to in ("none", "", None) else [cfg.report_to]
    if "tensorboard" in report and not _importable("tensorboard"):
        say("report_to=tensorboard but tensorboard is not installed (pip install 'zhlora[train]'); "
            "training without TensorBoard logs (train_log.jsonl is still written)")
        report = []
    if cfg.deepspeed:
        if not _importable("deepspeed"):
            raise ZhloraError(f"deepspeed={cfg.deepspeed} needs DeepSpeed, which is not installed; install it "
                              "with DS_BUILD_OPS=0 pip install 'zhlora[deepspeed]', or drop the deepspeed key")
        if not Path(cfg.deepspeed).is_file():
            raise ZhloraError(f"deepspeed={cfg.deepspeed}: no such file; ZeRO configs ship in examples/deepspeed/")
        import_deepspeed()  # imported here, quietly, before transformers imports it loudly
    if cfg.fsdp and not Path(cfg.fsdp).is_file():
        raise ZhloraError(f"fsdp={cfg.fsdp}: no such file; an FSDP config ships in examples/fsdp/lora.json")
    if "tensorboard" in report:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(plan.partial / "runs"))
    args = TrainingArguments(
        output_dir=str(plan.partial), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps > 0 else "no", save_steps=max(cfg.save_steps, 1),
        save_total_limit=cfg.save_total_limit,
        eval_strategy=("steps" if eval_steps else "no") if has_eval else "no", eval_steps=eval_steps,
        seed=cfg.seed, data_seed=cfg.seed, report_to=report, remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if cfg.group_by_length and not cfg.packing else "random",
        bf16=on_gpu and dtype == torch.bfloat16, fp16=on_gpu and dtype == torch.float16,
        use_cpu=not on_gpu, ddp_backend=None if on_gpu or world_size() == 1 else "gloo",
        deepspeed=cfg.deepspeed, fsdp=bool(cfg.fsdp), fsdp_config=cfg.fsdp,
        disable_tqdm=not is_main_process(), dataloader_num_workers=0,
    )
    if cfg.deepspeed:
        init_deepspeed_comm()
    return args


def quiet_deepspeed_on_cpu() -> None:
    """Without a GPU, tell DeepSpeed so: transformers imports it whenever it is installed, and
    its accelerator detection then warns "Setting accelerator to CPU" on every run, with or
    without a `deepspeed` key. An explicit DS_ACCELERATOR is kept."""
    if not devices.cuda_capabilities():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _importable(module: str) -> bool:
    """Installed? Found without importing it (deepspeed's import alone takes seconds)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:      # sys.modules[module] is None: imports of it are blocked
        return False


def uses_segments(cfg: TrainConfig, model) -> bool:
    """Packed rows attend per sample (no 4D mask) when the model follows transformers'
    attention interface and the recipe did not ask for the mask."""
    return (cfg.packing or cfg.padding_free) and cfg.packed_attention == "segments" and supports_segments(model)


def padding_free(cfg: TrainConfig, model) -> bool:
    """A batch (its samples, or its packed rows) runs as ONE unpadded row, attention per
    sample: no padding or packing filler is computed, and on CPU one (1, T) row ran faster than
    (B, T/B) rows of the same tokens (BENCHMARKS.md, "Packed rows as one row")."""
    return cfg.padding_free and uses_segments(cfg, model)


def packed_attention(cfg: TrainConfig, model):
    if not uses_segments(cfg, model):
        if cfg.packing:
            say("packed rows: 4D block-diagonal attention mask")
        return contextlib.nullcontext()
    if padding_free(cfg, model):
        say(f"batches: padding-free, the {'packed rows' if cfg.packing else 'samples'} of a batch back to back as "
            "one row with attention per sample (padding_free=true)")
    else:
        say("packed rows: attention per sample (packed_attention=segments)")
    return segment_attention(model)


def make_trainer(cfg, args, model, tokenizer, train_rows, eval_rows, callbacks, trainer_class=None):
    from transformers import Trainer

    from zhlora.train.trainer import LabelOnlyLossTrainer, resolve_pass_tokens

    # the method's own Trainer (P-Tuning's saves prefix-only checkpoints), else the label-only loss
    trainer_class = trainer_class or (LabelOnlyLossTrainer if cfg.label_only_loss else Trainer)
    flat = padding_free(cfg, model)
    collator = ds.Collator(pad_token_id=tokenizer.pad_token_id, packed=cfg.packing or flat,
                           block_mask=not uses_segments(cfg, model), flatten=flat)
    trainer = trainer_class(model=model, args=args, data_collator=collator,
                            train_dataset=ds.RowDataset(train_rows),
                            eval_dataset=ds.RowDataset(eval_rows) if eval_rows else None,
                            callbacks=callbacks or [])
    if cfg.pass_tokens and not flat:
        say(f"pass_tokens={cfg.pass_tokens} does not apply: this model's batches are padded, not padding-free")
    if flat and hasattr(trainer, "pass_tokens"):
        trainer.pass_tokens = resolve_pass_tokens(cfg.pass_tokens, args.device.type == "cuda")
        if trainer.pass_tokens:
            say(f"batches of {2 * trainer.pass_tokens} tokens or more run as forward/backward passes of "
                f"{trainer.pass_tokens} to {2 * trainer.pass_tokens} tokens each (pass_tokens), cut at sample "
                "starts, gradients accumulated")
    # transformers reads a warmup_steps float below 1 as a ratio and from 1 up as a step count
    # (warmup_ratio=1.0 would be one step), so the ratio becomes steps here, for every value
    trainer.args.warmup_steps = warmup_steps(cfg, len(trainer.get_train_dataloader()))
    return trainer


def warmup_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """`warmup_ratio` of the run's optimizer steps, rounded up, counted as the Trainer counts
    them (max_steps, else epochs x ceil(batches / grad_accum))."""
    total = cfg.max_steps
    if total <= 0:
        total = math.ceil(cfg.epochs * max(1, math.ceil(batches_per_epoch / cfg.grad_accum)))
    return math.ceil(cfg.warmup_ratio * total)


def train(cfg: TrainConfig, callbacks=None) -> TrainResult:
    """Run LoRA SFT for a recipe; returns the finished adapter folder, model and metrics."""
    started = time.time()
    device, dtype = devices.decide(cfg.device, cfg.dtype)  # a GPU that is not there: a message now
    quiet_deepspeed_on_cpu()
    plan = plan_output(cfg)
    model_cfg = read_config(cfg.model)
    family = family_for_config(model_cfg, cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    choice = template_for_model(cfg.model, cfg.template)
    template_name, template = choice.name, choice.template
    say(f"model: {cfg.model} (family {family.name}); template: {choice}; device {device}, "
        f"dtype {str(dtype).removeprefix('torch.')}, quantization {cfg.quantization}")
    convs, data_summary = load_data(cfg)
    train_convs, eval_convs = split_eval(convs, cfg.eval_ratio, cfg.seed)
    train_rows, stats = build_rows(train_convs, template, tokenizer, cfg, family)
    eval_rows = build_rows(eval_convs, template, tokenizer, cfg, family)[0] if eval_convs else []
    data_summary.update(train_samples=stats.samples, eval_samples=len(eval_convs),
                        truncated=stats.truncated, dropped_no_labels=stats.dropped_no_labels,
                        label_tokens=stats.label_tokens, tokens=stats.tokens, rows=len(train_rows))
    say(f"data: {stats.samples} training samples -> {len(train_rows)} rows"
        f"{' (packed)' if cfg.packing else ''}, {stats.label_tokens} response tokens, "
        f"{stats.truncated} truncated at cutoff_len={cfg.cutoff_len}, {len(eval_convs)} held out")
    say_template_cost(train_convs, template, tokenizer, stats, cfg.cutoff_len)
    # the arguments come first: with a ZeRO-3 config they make from_pretrained load the weights
    # already partitioned (deepspeed.zero.Init) instead of whole on every process
    args = training_arguments(cfg, plan, bool(eval_rows))
    method = build_method(cfg, family, tokenizer)
    model, resized = method.model, method.resized
    trainer = make_trainer(cfg, args, model, tokenizer, train_rows, eval_rows, callbacks, method.trainer_class)
    if plan.resume_from:
        say(f"resuming from {plan.resume_from}")
    with packed_attention(cfg, model):
        result = trainer.train(resume_from_checkpoint=plan.resume_from)
        metrics = {"train_loss": result.training_loss, "steps": result.global_step,
                   "train_runtime": result.metrics.get("train_runtime"),
                   "seconds": round(time.time() - started, 1)}
        if eval_rows:
            metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    meta = {"base_model": str(Path(cfg.model).resolve()), "base_fingerprint": fingerprint(cfg.model),
            "family": family.name, "method": cfg.method, "template": template_name, "train_on": cfg.train_on,
            "resized_vocab": resized, "quantization": quant.describe(cfg.quantization, _compute_dtype(cfg)),
            "train_args": cfg.to_dict(), "data_summary": data_summary,
            "metrics": metrics, "generation": {"max_new_tokens": cfg.max_new_tokens}}
    if cfg.method == "ptuning":
        meta["ptuning"] = dataclasses.asdict(cfg.ptuning)
    finalize(trainer, tokenizer, plan, meta, save_tokenizer=bool(resized), keep=cfg.keep_checkpoints,
             save_weights=method.save_weights)
    say(f"done: {metrics}. Adapter: {plan.output}")
    return TrainResult(plan.output, trainer.model, metrics)


def _compute_dtype(cfg: TrainConfig) -> torch.dtype:
    return devices.decide(cfg.device, cfg.dtype)[1]


def finalize(trainer, tokenizer, plan: Plan, meta: dict, save_tokenizer: bool, keep: bool,
             save_weights=None) -> None:
    """Write the adapter (`save_weights(trainer, folder)`, default the PEFT adapter), metadata, logs and loss curve into `.partial`, then rename it.
    Sharded runs (ZeRO-3, FSDP) gather the adapter's parameters on every rank first."""
    trainer.accelerator.wait_for_everyone()
    state = adapter_state(trainer)
    if trainer.is_world_process_zero():
        if save_weights is None:
            trainer.model.save_pretrained(str(plan.partial), state_dict=state)
        else:
            save_weights(trainer, plan.partial)
        write_chat_template(plan.partial, meta["template"], tokenizer if save_tokenizer else None)
        write_adapter_meta(plan.partial, meta)
        history = trainer.state.log_history
        (plan.partial / "train_log.jsonl").write_text(
            "".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")
        plot_loss(history, plan.partial / "loss.png")
        if not keep:  # checkpoints only serve resume; the adapter is in the folder root
            for ck in plan.partial.glob("checkpoint-*"):
                shutil.rmtree(ck)
        if plan.output.exists():  # overwrite=true was checked in plan_output
            shutil.rmtree(plan.output)
        replace_dir(plan.partial, plan.output)
    trainer.accelerator.wait_for_everyone()


def plot_loss(history: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if train or evals:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
