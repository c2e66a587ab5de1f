"""A thin wrapper over llama-cpp-python (the `llamacpp` extra): load a GGUF file, tokenize,
greedy-decode, chat. The one place that absorbs llama-cpp-python's API churn; used by the tests
that prove an exported file runs, the demo and the benchmark."""
from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

from zhlora.errors import ZhloraError


def available() -> bool:
    """True if llama-cpp-python is installed (`pip install 'zhlora[llamacpp]'`)."""
    return importlib.util.find_spec("llama_cpp") is not None


def load(path: str | Path, n_ctx: int = 512, n_threads: int = 1, seed: int = 0):
    """A `llama_cpp.Llama` for the file, quiet (llama.cpp's own log muted)."""
    if not available():
        raise ZhloraError("llama-cpp-python is not installed; install the extra: pip install 'zhlora[llamacpp]'")
    from llama_cpp import Llama

    with _quiet():
        try:
            return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                         seed=seed, verbose=False, n_gpu_layers=0)
        except (ValueError, RuntimeError) as e:
            raise ZhloraError(f"{path}: llama.cpp could not load the file ({e})") from None


def tokenize(llm, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)


def greedy(llm, ids: list[int], max_new_tokens: int, stop_at_eog: bool = True) -> list[int]:
    """Greedy continuation of the token ids `ids` (argmax at every step, no penalties)."""
    out: list[int] = []
    llm.reset()
    for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        if stop_at_eog and _is_eog(llm, tok):
            break
        out.append(tok)
        if len(out) >= max_new_tokens:
            break
    return out


def chat(llm, messages: list[dict], max_new_tokens: int) -> str:
    """The assistant's greedy answer, the prompt rendered by llama.cpp from the GGUF chat template."""
    res = llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                     repeat_penalty=1.0, max_tokens=max_new_tokens, seed=0)
    return res["choices"][0]["message"]["content"]


def _is_eog(llm, tok: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), tok))


@contextlib.contextmanager
def _quiet():
    """llama.cpp prints to the C-level stderr while loading; send it to /dev/null."""
    fd = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)
