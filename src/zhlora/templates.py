"""Chat templates: ONE registry shared by training and inference.

A template turns a `Conversation` into token ids plus loss labels (training) or into prompt
ids (generation). Templates are data: each is a `ChatTemplate` of formatted parts. A part is
either text (may contain `{content}` and `{idx}`, the round number) or a special token
(`Tok("<|im_end|>")`, `BOS`, `EOS`) looked up in the tokenizer's vocabulary, so special
tokens are never produced by splitting text.

Labels: prompt tokens are -100; assistant content and its end-of-turn token are trained.
Truncation to `cutoff_len` drops whole rounds from the end, then shortens *content*
segments; structural segments (role tokens, `[gMASK]`, `<|im_start|>assistant\n`...) are
never cut.
"""
from __future__ import annotations

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

    def _render(self, parts: tuple, tokenizer, content: str = "", idx: int = 0) -> list[tuple[list[int], bool]]:
        """-> [(ids, is_content)] for each part."""
        out = []
        for p in parts:
            if isinstance(p, Tok):
                tid = self._token_id(p, tokenizer)
                if tid is not None:
                    out.append(([tid], False))
            elif "{content}" in p:
                before, after = p.split("{content}", 1)
                before, after = before.replace("{idx}", str(idx)), after.replace("{idx}", str(idx))
                if before:
                    out.append((_encode_text(tokenizer, before), False))
                if content:
                    out.append((_encode_text(tokenizer, content), True))
                if after:
                    out.append((_encode_text(tokenizer, after), False))
            else:
                text = p.replace("{idx}", str(idx))
                if text:
                    out.append((_encode_text(tokenizer, text), False))
        return out

    # -- segments ------------------------------------------------------------------
    def _rounds(self, conv: Conversation, tokenizer) -> tuple[list[_Seg], list[tuple[list[_Seg], list[_Seg]]]]:
        """-> (head segments, [(prompt segments, answer segments) per round])."""
        system = conv.system or self.default_system
        head = [_Seg(ids, False, c) for ids, c in self._render(self.prefix, tokenizer)]
        if system and not self.system_in_first_user:
            head += [_Seg(ids, False, c) for ids, c in self._render(self.system, tokenizer, system)]
        rounds = []
        msgs = conv.messages
        for r in range(0, len(msgs), 2):
            user, answer = msgs[r], (msgs[r + 1] if r + 1 < len(msgs) else None)
            idx = self.round_start + r // 2
            prompt: list[_Seg] = []
            if r > 0 and self.separator:
                prompt += [_Seg(ids, False, c) for ids, c in self._render(self.separator, tokenizer, idx=idx)]
            if r == 0 or not self.assistant_end_opens_user:
                prompt += [_Seg(ids, False, c) for ids, c in self._render(self.user_open, tokenizer, idx=idx)]
            text = user.content
            if r == 0 and system and self.system_in_first_user:
                text = "".join(self.system).replace("{content}", system) + text
            prompt += [_Seg(ids, False, c) for ids, c in self._render(self.user, tokenizer, text, idx)]
            ans: list[_Seg] = []
            if answer is not None:
                for ids, c in self._render(self.assistant, tokenizer, answer.content, idx):
                    ans.append(_Seg(ids, c, c))  # only the content itself is trained ...
                ans += [_Seg(ids, True, False) for ids, _ in self._render(self.assistant_end, tokenizer, idx=idx)]
            rounds.append((prompt, ans))  # ... plus the end-of-turn token
        return head, rounds

    # -- public API ----------------------------------------------------------------
    def encode(self, conv: Conversation, tokenizer, cutoff_len: int | None = None,
               train_on: str = "all") -> Encoded:
        """Token ids and labels for training. `train_on`: "all" assistant turns or "last"."""
        if train_on not in ("all", "last"):
            raise ZhloraError(f"train_on must be 'all' or 'last', got {train_on!r}")
        head, rounds = self._rounds(conv, tokenizer)
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

        `conv` ends with a user message; earlier answers are rendered as in training.
        """
        if not conv.messages or conv.messages[-1].role != "user":
            raise ZhloraError("a generation prompt must end with a user message")
        head, rounds = self._rounds(conv, tokenizer)
        opener = [_Seg(ids, False, False) for ids, c in self._render(self.assistant, tokenizer, "", 0)
                  if not c]
        # the part of the assistant format before {content} belongs to the prompt
        opener = opener[:_parts_before_content(self.assistant)]
        rounds[-1] = (rounds[-1][0] + opener, [])
        segs, _ = _fit(head, rounds, max_len)
        return [t for s in segs for t in s.ids]

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


def _parts_before_content(parts: tuple) -> int:
    """Number of rendered segments before `{content}` (text before it counts as one)."""
    n = 0
    for p in parts:
        if isinstance(p, Tok):
            n += 1
        elif "{content}" in p:
            return n + (1 if p.split("{content}", 1)[0] else 0)
        elif p:
            n += 1
    return n


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
    default_system="You are a helpful assistant. 你是一个乐于助人的助手。",
    description="Chinese-Alpaca-2 / Llama-2 chat: <s>[INST] <<SYS>>...<</SYS>> q [/INST] a </s>"))

register_template(ChatTemplate(
    name="chatml",
    system=(Tok("<|im_start|>"), "system\n{content}", Tok("<|im_end|>"), "\n"),
    user=(Tok("<|im_start|>"), "user\n{content}", Tok("<|im_end|>"), "\n",
          Tok("<|im_start|>"), "assistant\n"),
    assistant_end=(Tok("<|im_end|>"),),
    separator=("\n",),
    default_system="You are a helpful assistant.",
    stop=("<|im_end|>",),
    description="Qwen / Qwen2 / Qwen2.5 ChatML"))

register_template(ChatTemplate(
    name="glm4",
    prefix=(Tok("[gMASK]"), Tok("<sop>")),
    system=(Tok("<|system|>"), "\n{content}"),
    user_open=(Tok("<|user|>"),),
    user=("\n{content}", Tok("<|assistant|>"), "\n"),
    assistant_end=(Tok("<|user|>"),),
    assistant_end_opens_user=True,
    stop=("<|user|>", "<|observation|>"),
    description="GLM-4 (transformers' native glm4): [gMASK]<sop><|user|>\\nq<|assistant|>\\na<|user|>..."))


__all__ = ["ChatTemplate", "Tok", "BOS", "EOS", "Encoded", "IGNORE_INDEX", "TEMPLATES",
           "register_template", "get_template", "Message"]
