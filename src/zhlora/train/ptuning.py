"""P-Tuning v2 training (`method: ptuning`), THUDM's `ptuning` recipe for the ChatGLM family.

The base is loaded as for LoRA and frozen; a fresh `transformer.prefix_encoder` of
`pre_seq_len` virtual tokens (optionally with THUDM's projection MLP) is put in and is the only
thing that trains, in fp32 whatever the base's dtype (THUDM: `model.half()` then
`model.transformer.prefix_encoder.float()`). The training loop is the transformers Trainer, as
for LoRA; its checkpoints and the finished folder hold only the prefix encoder, in the layout
THUDM's loader reads (see zhlora.models.chatglm.ptuning).

Other families are refused: their transformers classes have no prefix input of their own, and
PEFT's prefix tuning (past_key_values built by PEFT) is a different method from THUDM's recipe.
"""
from __future__ import annotations

from transformers import Trainer

from zhlora.errors import ZhloraError
from zhlora.families import Family
from zhlora.models.loading import load_model
from zhlora.train.config import TrainConfig
from zhlora.train.checkpointing import enable_checkpointing
from zhlora.train.lora import trainable_summary


def check_family(family: Family) -> None:
    if not family.ptuning:
        raise ZhloraError(
            f"method=ptuning: the {family.name} family has no native P-Tuning v2 prefix encoder. zhlora trains "
            "P-Tuning v2 the way THUDM's recipe does, for ChatGLM-6B, ChatGLM2/3-6B and GLM-4 in THUDM's "
            "chatglm format; PEFT's prefix tuning for other families is not offered (a different method, "
            f"with its own cache handling). Use method=lora for {family.name}")


def build_model(cfg: TrainConfig, family: Family, tokenizer, say=print):
    """The frozen base with a new fp32 prefix encoder, the only trainable part."""
    from transformers import set_seed

    from zhlora.models.chatglm.ptuning import new_prefix_encoder, trunk

    check_family(family)
    set_seed(cfg.seed)  # the prefix encoder is drawn here
    model = load_model(cfg.model, dtype=cfg.dtype, allow_bin=cfg.allow_bin)
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise ZhloraError(f"method=ptuning: the tokenizer has {len(tokenizer)} tokens but the model's embeddings "
                          f"{vocab}; P-Tuning keeps the base frozen and cannot grow the vocabulary: use method=lora")
    model.requires_grad_(False)
    s = cfg.ptuning
    trunk(model).prefix_encoder = new_prefix_encoder(model, s.pre_seq_len, s.prefix_projection)
    model.config.pre_seq_len, model.config.prefix_projection = s.pre_seq_len, s.prefix_projection
    if cfg.gradient_checkpointing:
        enable_checkpointing(model, cfg.checkpoint_every, final=True)  # PrefixTrainer: full logits
    say(f"P-Tuning v2 pre_seq_len={s.pre_seq_len} prefix_projection={s.prefix_projection} "
        f"(prefix encoder fp32, base frozen): {trainable_summary(model)}")
    return model


class PrefixTrainer(Trainer):
    """The transformers Trainer, saving checkpoints as P-Tuning folders (prefix encoder only,
    not the frozen base); `resume=true` loads them back (the Trainer loads non-strictly)."""

    base_dir: str = ""

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        from zhlora.models.chatglm.ptuning import save_checkpoint

        if self.args.should_save:
            save_checkpoint(self.model, output_dir or self.args.output_dir, self.base_dir)


def trainer_class(cfg: TrainConfig):
    """A PrefixTrainer subclass that knows the base folder (config.json of the checkpoints)."""
    return type("PrefixTrainer", (PrefixTrainer,), {"base_dir": cfg.model})


def save_weights(trainer, folder, cfg: TrainConfig) -> None:
    from zhlora.models.chatglm.ptuning import save_checkpoint

    save_checkpoint(trainer.model, folder, cfg.model)
