"""Import arrows of src/zhlora that run against the pipeline's layering, and import cycles.

    python tools/import_graph.py [SRC_DIR]

Layers, lowest first: the shared core at the package root (errors, outputs, runinfo,
conversation, families, templates, the package __init__), then data, models, train, merge,
infer, gec, embedded, and the CLI on top. An arrow "back up" is an import (at module level or
inside a function) from a lower layer into a higher one, e.g. a model module importing the
GEC vertical, or the root's template registry importing a stage folder. Also counted: module
import cycles at module level (they can fail at import time) and, apart, the circles closed
only by imports inside functions.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

LAYERS = ["core", "data", "models", "train", "merge", "infer", "gec", "embedded", "cli"]


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer(mod: str) -> str:
    parts = mod.split(".")
    if len(parts) == 1 or parts[1] in ("errors", "outputs", "runinfo", "conversation", "families",
                                       "templates", "__main__"):
        return "cli" if mod in ("zhlora.__main__",) else "core"
    if parts[1] == "cli":
        return "cli"
    return parts[1] if parts[1] in LAYERS else "core"


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported zhlora module, at module level?) for each import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        out += [(n, id(node) in top) for n in names if n.split(".")[0] == "zhlora"]
    return out


def resolve(name: str, known: set[str]) -> str:
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def main(src: Path) -> None:
    files = {module_name(p, src): p for p in sorted((src / "zhlora").rglob("*.py"))}
    known = set(files)
    up, graph, lazy = [], {m: set() for m in files}, {m: set() for m in files}
    for mod, path in files.items():
        for target, toplevel in imports(path):
            t = resolve(target, known)
            if t == mod:
                continue
            lazy[mod].add(t)
            if toplevel:
                graph[mod].add(t)
            if LAYERS.index(layer(t)) > LAYERS.index(layer(mod)):
                up.append(f"{mod} ({layer(mod)}) -> {t} ({layer(t)})")
    for line in sorted(set(up)):
        print("up   ", line)
    cycles = find_cycles(graph)
    for c in cycles:
        print("cycle", " -> ".join(c))
    loops = [c for c in find_cycles(lazy) if c not in cycles]
    for c in loops:
        print("loop ", " <-> ".join(c), "(through imports inside functions)")
    print(f"{len(set(up))} arrows back up, {len(cycles)} import cycles at module level, "
          f"{len(loops)} more through imports inside functions, {len(files)} modules")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One representative cycle per strongly connected component of size > 1 (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return comps


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "src"))
