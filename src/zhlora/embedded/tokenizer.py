"""The embedded base's tokenizer: one token per character, corpus characters + the 3,755
level-1 GB2312 characters; the alpaca scaffolding strings are single added tokens so a prompt
costs few positions."""
from __future__ import annotations


def gb2312_level1() -> str:
    """The 3,755 most common Chinese characters (GB2312 rows 16-55)."""
    chars = []
    for hi in range(0xB0, 0xD8):
        for lo in range(0xA1, 0xFF):
            try:
                chars.append(bytes([hi, lo]).decode("gb2312"))
            except UnicodeDecodeError:
                continue
    return "".join(chars)


def scaffold_tokens() -> list[str]:
    """The fixed strings of the alpaca prompt, each one token."""
    from zhlora.templates import get_template

    t = get_template("alpaca")
    before, after = t.user[0].split("{content}")
    return [t.default_system, before, after]


def build_tokenizer(paras: list[str]):
    from tokenizers import AddedToken

    from zhlora.models.tiny import build_char_tokenizer

    chars = "".join(sorted(set("".join(paras))))
    tok = build_char_tokenizer([chars], "llama", extra_chars=gb2312_level1())
    tok.add_tokens([AddedToken(s, normalized=False, special=False) for s in scaffold_tokens()])
    return tok


