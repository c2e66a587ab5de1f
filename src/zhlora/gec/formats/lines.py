"""One record per line: para / mucgec (`id<TAB>source<TAB>targets...`), sighan
(`source<TAB>target`) and the NLPCC 2018 training file."""
from __future__ import annotations

from zhlora.gec.formats.base import Example, finish, read_lines
from zhlora.gec.formats.m2 import load_m2


def load_para(path) -> list[Example]:
    examples, problems = [], []
    for n, line in read_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[1].strip():
            problems.append(f"{path}:{n}: expected id<TAB>source[<TAB>target...], found "
                            f"{len(fields)} field(s)")
            continue
        examples.append(Example(fields[0].strip(), fields[1].strip(), [t.strip() for t in fields[2:]]))
    return finish(path, examples, problems, "para")


def load_sighan(path) -> list[Example]:
    examples, problems = [], []
    for n, line in read_lines(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            problems.append(f"{path}:{n}: expected source<TAB>target, found {len(fields)} field(s)")
            continue
        examples.append(Example(str(n), fields[0], [fields[1]]))
    return finish(path, examples, problems, "sighan")


def load_nlpcc18(path) -> list[Example]:
    """NLPCC 2018: the gold M2 file, or the training file `sid<TAB>n<TAB>src<TAB>corrections`."""
    lines = read_lines(path)
    first = next((t for _, t in lines if t.strip()), "")
    if first.startswith("S "):
        return load_m2(path, fmt="nlpcc18")
    examples, problems = [], []
    for n, line in lines:
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3 or not fields[1].strip().isdigit():
            problems.append(f"{path}:{n}: expected sid<TAB>number of corrections<TAB>source"
                            "<TAB>corrections... (the NLPCC 2018 training file) or an M2 file")
            continue
        k = int(fields[1])
        targets = [t.strip() for t in fields[3:3 + k]] or [fields[2].strip()]
        if len(fields) - 3 < k:
            problems.append(f"{path}:{n}: says {k} correction(s) but has {len(fields) - 3}")
            continue
        examples.append(Example(fields[0].strip(), fields[2].strip(), targets))
    return finish(path, examples, problems, "nlpcc18")
