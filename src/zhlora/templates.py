"""Chat templates: ONE registry shared by training and inference.

A template turns a `Conversation` into token ids plus loss labels (training) or into prompt
ids (generation). Templates are data: each is a `ChatTemplate` of formatted parts. A part is
either text (may contain `{content}` and `{idx}`, the round number) or a special token
(`Tok("<|im_end|>")`, `BOS`, `EOS`) looked up in the tokenizer's vocabulary, so special
tokens are never produced by splitting text.

Labels: prompt tokens are -100; the answer -- the `assistant` parts (text the model writes
before/after the content, e.g. GLM's newline after `<|assistant|>`), the content and the
end-of-turn token -- is trained. The generation prompt ends where the answer begins, as the
official `apply_chat_template(add_generation_prompt=True)` of each model does.
Truncation to `cutoff_len` drops whole rounds from the end, then shortens *content*
segments; structural segments (role tokens, `[gMASK]`, `<|im_start|>assistant\n`...) are
never cut.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from zhlora.conversation import Conversation, Message
from zhlora.errors import ZhloraError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Tok:
    """A special token, by its string in the vocabulary."""
    token: str


BOS = Tok("<<bos>>")
EOS = Tok("<<eos>>")
Part = "str | Tok"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class _Seg:
    ids: list[int]
    trained: bool
    content: bool  # content segments may be shortened; structure never


@dataclass(frozen=True)
class ChatTemplate:
    """A data-driven chat format.

    Rendering of a conversation (square brackets = optional):
        prefix [system] [user_open] user assistant assistant_end separator
        [user_open only when the previous assistant_end did not open the next turn] user ...
    `user_open` is emitted before a user turn only if `assistant_end_opens_user` is false or
    it is the first round (GLM-style "efficient EOS": the end token of an answer is the role
    token of the next user turn).
    Text between special tokens is encoded in one piece with a fast tokenizer (see
    `_to_segments`), so the ids equal those of tokenizing the rendered text.
    """

    name: str
    user: tuple
    assistant: tuple = ("{content}",)
    assistant_end: tuple = (EOS,)
    prefix: tuple = ()
    system: tuple = ("{content}",)
    user_open: tuple = ()
    assistant_end_opens_user: bool = False
    separator: tuple = ()
    default_system: str = ""
    system_in_first_user: bool = False  # llama2: <<SYS>> goes inside the first [INST]
    round_start: int = 1
    last_answer_prefix: str = ""  # text before the content of the LAST answer only (Qwen3's empty think block)
    stop: tuple = ()  # extra stop tokens/strings for generation
    description: str = ""

    # -- token resolution ----------------------------------------------------------
    def _token_id(self, tok: Tok, tokenizer) -> int | None:
        if tok is BOS:
            return tokenizer.bos_token_id
        if tok is EOS:
            if tokenizer.eos_token_id is None:
                raise ZhloraError(f"template {self.name!r} trains an EOS token but the tokenizer "
                                  f"({getattr(tokenizer, 'name_or_path', '?')}) has no eos_token; "
                                  "set eos_token in its tokenizer_config.json")
            return tokenizer.eos_token_id
        tid = tokenizer.convert_tokens_to_ids(tok.token)
        unk = getattr(tokenizer, "unk_token_id", None)
        if tid is None or (tid == unk and tok.token != getattr(tokenizer, "unk_token", None)):
            raise ZhloraError(
                f"template {self.name!r} needs the special token {tok.token!r}, which the tokenizer "
                f"at {getattr(tokenizer, 'name_or_path', '?')} does not have; pick the template "
                "that matches the model (template=...) or add the token to the tokenizer")
        return tid

    def _pieces(self, parts: tuple, tokenizer, content: str = "", idx: int = 0,
                trained: bool = False) -> list[_Piece]:
        """The parts as pieces: special token ids, structure text, the content text."""
        out = []
        for p in parts:
            if isinstance(p, Tok):
                tid = self._token_id(p, tokenizer)
                if tid is not None:
                    out.append(_Piece(None, tid, trained, False))
                continue
            before, has, after = p.partition("{content}")
            before, after = before.replace("{idx}", str(idx)), after.replace("{idx}", str(idx))
            if before:
                out.append(_Piece(before, None, trained, False))
            if has and content:
                out.append(_Piece(content, None, trained, True))
            if after:
                out.append(_Piece(after, None, trained, False))
        return out

    # -- rounds --------------------------------------------------------------------
    def _rounds(self, conv: Conversation, tokenizer):
        """-> (head pieces, [(prompt pieces, answer pieces) per round]); a conversation that
        ends with a user turn (generation) has no answer in its last round."""
        system = conv.system or self.default_system
        head = self._pieces(self.prefix, tokenizer)
        if system and not self.system_in_first_user:
            head += self._pieces(self.system, tokenizer, system)
        rounds = []
        msgs = conv.messages
        for r in range(0, len(msgs), 2):
            user, answer = msgs[r], (msgs[r + 1] if r + 1 < len(msgs) else None)
            idx = self.round_start + r // 2
            ask: list[_Piece] = []
            if r > 0 and self.separator:
                ask += self._pieces(self.separator, tokenizer, idx=idx)
            if r == 0 or not self.assistant_end_opens_user:
                ask += self._pieces(self.user_open, tokenizer, idx=idx)
            text = user.content
            if r == 0 and system and self.system_in_first_user:
                text = "".join(self.system).replace("{content}", system) + text
            ask += self._pieces(self.user, tokenizer, text, idx)
            ans: list[_Piece] = []
            if answer is not None:  # the whole answer is trained: its text and end token
                content = answer.content
                if self.last_answer_prefix and r + 2 >= len(msgs):
                    content = self.last_answer_prefix + content
                ans = self._pieces(self.assistant, tokenizer, content, idx, trained=True)
                ans += self._pieces(self.assistant_end, tokenizer, idx=idx, trained=True)
            rounds.append((ask, ans))
        return head, rounds

    # -- public API ----------------------------------------------------------------
    def encode(self, conv: Conversation, tokenizer, cutoff_len: int | None = None,
               train_on: str = "all") -> Encoded:
        """Token ids and labels for training. `train_on`: "all" assistant turns or "last"."""
        if train_on not in ("all", "last"):
            raise ZhloraError(f"train_on must be 'all' or 'last', got {train_on!r}")
        head, rounds = _to_segments(*self._rounds(conv, tokenizer), tokenizer)
        if train_on == "last":
            rounds = [(p, [_Seg(s.ids, False, s.content) for s in a]) for p, a in rounds[:-1]] + rounds[-1:]
        segs, truncated = _fit(head, rounds, cutoff_len)
        ids, labels = [], []
        for s in segs:
            ids += s.ids
            labels += s.ids if s.trained else [IGNORE_INDEX] * len(s.ids)
        return Encoded(ids, labels, truncated)

    def encode_prompt(self, conv: Conversation, tokenizer, max_len: int | None = None) -> list[int]:
        """Prompt ids for generation: the history, the last user turn, the assistant opener.

        `conv` ends with a user message; earlier answers are rendered as in training. The
        prompt ends where the assistant's answer (`assistant` parts) begins.
        """
        if not conv.messages or conv.messages[-1].role != "user":
            raise ZhloraError("a generation prompt must end with a user message")
        head, rounds = _to_segments(*self._rounds(conv, tokenizer), tokenizer)
        segs, _ = _fit(head, rounds, max_len)
        return [t for s in segs for t in s.ids]

    def answer_text(self, generated: str) -> str:
        """A generated answer without the text the template puts before the content (GLM's
        newline after `<|assistant|>`), which the model writes itself."""
        lead = "".join(p for p in self.assistant if isinstance(p, str)).split("{content}")[0].strip(" ")
        for prefix in (lead, self.last_answer_prefix):
            if prefix and generated.startswith(prefix):
                generated = generated[len(prefix):]
        return generated

    def stop_token_ids(self, tokenizer) -> list[int]:
        """Token ids that end a generated answer (EOS/end-of-turn and `stop`)."""
        ids = []
        for p in self.assistant_end + tuple(Tok(s) for s in self.stop):
            if isinstance(p, Tok):
                tid = self._token_id(p, tokenizer)
                if tid is not None and tid not in ids:
                    ids.append(tid)
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
            ids.append(tokenizer.eos_token_id)
        return ids


@dataclass
class _Piece:
    text: str | None     # text to encode, or None for a special token
    tid: int | None
    trained: bool
    content: bool


def _to_segments(head: list[_Piece], rounds: list, tokenizer):
    """Encode all pieces, keeping the (head, rounds) layout: one segment per piece.

    A fast tokenizer encodes each run of text between special tokens in ONE call, as
    `tokenizer.apply_chat_template` does with the rendered text (SentencePiece vocabularies add
    a word-start mark at the start of every separately encoded string, so splitting a run would
    change the ids); offsets tell which piece each token belongs to, a token overlapping the
    content belongs to the content. A slow tokenizer (zhlora's native ChatGLM classes) encodes
    each piece on its own, as THUDM's `build_single_message` does.
    """
    flat = head + [p for ask, ans in rounds for p in ask + ans]
    ids = _encode_pieces(flat, tokenizer)
    segs = [_Seg(i, p.trained, p.content) for p, i in zip(flat, ids)]
    out_head, k, out_rounds = segs[:len(head)], len(head), []
    for ask, ans in rounds:
        out_rounds.append((segs[k:k + len(ask)], segs[k + len(ask):k + len(ask) + len(ans)]))
        k += len(ask) + len(ans)
    return out_head, out_rounds


def _encode_pieces(pieces: list[_Piece], tokenizer) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in pieces]
    run: list[int] = []  # indices of the current run of text pieces
    for i, p in enumerate(pieces + [_Piece(None, None, False, False)]):
        if p.text is not None:
            run.append(i)
            continue
        if run:
            for j, ids in zip(run, _encode_run([pieces[j] for j in run], tokenizer)):
                out[j] = ids
            run = []
        if i < len(pieces):
            out[i] = [p.tid]
    return out


def _encode_run(run: list[_Piece], tokenizer) -> list[list[int]]:
    if not getattr(tokenizer, "is_fast", False) or len(run) == 1:
        return [_encode_text(tokenizer, p.text) for p in run]
    text = "".join(p.text for p in run)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    bounds, pos = [], 0
    for p in run:
        bounds.append((pos, pos + len(p.text)))
        pos += len(p.text)
    out: list[list[int]] = [[] for _ in run]
    for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
        over = [j for j, (lo, hi) in enumerate(bounds) if a < hi and b > lo]
        owner = next((j for j in over if run[j].content), None)
        if owner is None:
            owner = over[0] if over else next((j for j, (lo, hi) in enumerate(bounds) if a < hi), len(run) - 1)
        out[owner].append(tid)
    return out


def _encode_text(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _fit(head: list[_Seg], rounds: list, cutoff_len: int | None) -> tuple[list[_Seg], bool]:
    """Keep the head and as many whole rounds as fit; then shorten content segments."""
    flat = lambda rs: [s for p, a in rs for s in p + a]  # noqa: E731
    total = lambda segs: sum(len(s.ids) for s in segs)  # noqa: E731
    if cutoff_len is None or total(head + flat(rounds)) <= cutoff_len:
        return head + flat(rounds), False
    kept = list(rounds)
    while len(kept) > 1 and total(head + flat(kept)) > cutoff_len:
        kept.pop()
    segs = [_Seg(list(s.ids), s.trained, s.content) for s in head + flat(kept)]
    excess = total(segs) - cutoff_len
    structure = sum(len(s.ids) for s in segs if not s.content)
    if structure > cutoff_len:
        raise ZhloraError(f"cutoff_len={cutoff_len} is shorter than the template's own special "
                          f"tokens ({structure}); raise cutoff_len")
    # shorten the longest content segment first, one token at a time in bulk steps
    while excess > 0:
        longest = max((s for s in segs if s.content), key=lambda s: len(s.ids))
        others = sorted((len(s.ids) for s in segs if s.content and s is not longest), reverse=True)
        floor = others[0] if others else 0
        cut = min(excess, max(1, len(longest.ids) - floor))
        del longest.ids[len(longest.ids) - cut:]
        excess -= cut
    return [s for s in segs if s.ids], True


# -- the registry ----------------------------------------------------------------------
TEMPLATES: dict[str, ChatTemplate] = {}


def register_template(t: ChatTemplate) -> ChatTemplate:
    TEMPLATES[t.name] = t
    return t


def get_template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        from zhlora.families import load_native_modules

        load_native_modules()  # the ChatGLM templates register with their package
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ZhloraError(f"unknown template {name!r}; known: {', '.join(sorted(TEMPLATES))}") from None


register_template(ChatTemplate(
    name="default",
    prefix=(BOS,),
    system=("{content}\n",),
    user=("Human: {content}\nAssistant: ",),
    separator=("\n",),
    description="plain Human/Assistant turns; for base models without a chat format"))

register_template(ChatTemplate(
    name="alpaca",
    prefix=(BOS,),
    system=("{content}\n\n",),
    user=("### Instruction:\n{content}\n\n### Response:\n",),
    separator=("\n\n",),
    default_system=("Below is an instruction that describes a task. "
                    "Write a response that appropriately completes the request."),
    description="Chinese-LLaMA/Alpaca (v1, Plus) instruction wrapper (Stanford Alpaca prompt)"))

register_template(ChatTemplate(
    name="llama2",
    user=(BOS, "[INST] {content} [/INST]"),
    system=("<<SYS>>\n{content}\n<</SYS>>\n\n",),
    system_in_first_user=True,
    assistant=(" {content} ",),
    description="Llama-2-chat (meta-llama's chat_template): <s>[INST] <<SYS>>...<</SYS>> q [/INST] a </s>, "
                "no default system"))

register_template(ChatTemplate(
    name="chinese-alpaca-2",
    user=(BOS, "[INST] {content} [/INST]"),
    system=("<<SYS>>\n{content}\n<</SYS>>\n\n",),
    system_in_first_user=True,
    assistant=(" {content}",),
    default_system="You are a helpful assistant. 你是一个乐于助人的助手。",
    description="Chinese-LLaMA-2 / Chinese-Alpaca-2 (hfl's inference code): Llama-2 layout, own default "
                "system, a</s> without a space"))

CHATML = register_template(ChatTemplate(
    name="chatml",
    system=(Tok("<|im_start|>"), "system\n{content}", Tok("<|im_end|>"), "\n"),
    user=(Tok("<|im_start|>"), "user\n{content}", Tok("<|im_end|>"), "\n",
          Tok("<|im_start|>"), "assistant\n"),
    assistant_end=(Tok("<|im_end|>"),),
    separator=("\n",),
    default_system="You are a helpful assistant.",
    stop=("<|im_end|>",),
    description="Qwen / Qwen2 ChatML (default system 'You are a helpful assistant.')"))

register_template(dataclasses.replace(
    get_template("chatml"), name="qwen2.5",
    default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    description="Qwen2.5 ChatML (its default system prompt names Qwen)"))

register_template(dataclasses.replace(
    get_template("chatml"), name="qwen3", default_system="", last_answer_prefix="<think>\n\n</think>\n\n",
    description="Qwen3 ChatML, non-thinking: no default system; the last answer starts with an empty "
                "<think></think> block, as Qwen3's chat_template renders it"))

register_template(ChatTemplate(
    name="glm4",
    prefix=(Tok("[gMASK]"), Tok("<sop>")),
    system=(Tok("<|system|>"), "\n{content}"),
    user_open=(Tok("<|user|>"),),
    user=("\n{content}", Tok("<|assistant|>")),
    assistant=("\n{content}",),  # the model writes the newline after <|assistant|> itself
    assistant_end=(Tok("<|user|>"),),
    assistant_end_opens_user=True,
    stop=("<|user|>", "<|observation|>"),
    description="GLM-4 (glm-4-9b-chat, and transformers' glm4/glm): [gMASK]<sop><|user|>\\nq<|assistant|>\\na<|user|>..."))


from zhlora.template_choice import TemplateChoice, template_for_model  # noqa: E402  (re-export)

__all__ = ["ChatTemplate", "Tok", "BOS", "EOS", "Encoded", "IGNORE_INDEX", "TEMPLATES",
           "register_template", "get_template", "Message", "TemplateChoice", "template_for_model"]
