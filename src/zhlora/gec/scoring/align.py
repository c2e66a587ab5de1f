"""ChERRANT's char-level alignment: a weighted edit distance with transpositions, and every
alignment of minimal cost.

Operations (cell (i, j) covers src[:i] and tgt[:j]):
  "M" match (src[i-1] == tgt[j-1], cost of the diagonal; nothing else is considered there),
  "S" substitution (resources.sub_cost), "I" insertion (1), "D" deletion (1),
  "T<k>" transposition of the last k tokens (src window and tgt window are anagrams; cost k-1).
The transposition search walks back along the diagonal while the diagonal cost keeps
changing, exactly as ChERRANT does. When several operations reach the minimal cost, all are
kept in the order T, S, I, D; backtracking enumerates every path depth-first in that order
(or only the first choice when the lengths differ by more than 10).
ChERRANT has no limit on the number of tied alignments; we stop after MAX_ALIGNMENTS so a
degenerate model output cannot hang an evaluation (MuCGEC dev needs at most 32).

An alignment is a list of (op, src_start, src_end, tgt_start, tgt_end) from left to right.
"""
from __future__ import annotations

from typing import Iterator

from zhlora.gec.scoring.resources import sub_cost, sub_costs_from

AlignOp = tuple[str, int, int, int, int]
_INF = float("inf")
MAX_ALIGNMENTS = 10_000


def cost_matrix(src: list[str], tgt: list[str]) -> list[list[float]]:
    """The (len(src)+1, len(tgt)+1) matrix of minimal alignment costs.

    Every cell is computed with the same float operations as ChERRANT (ties are decided by
    float equality). Speed-ups that do not change any value: substitution costs are looked
    up once per (char, char) pair, and the transposition search runs only where an anagram
    window is possible at all (src[i] occurs earlier in tgt and tgt[j] earlier in src).
    """
    m = len(tgt)
    cost = [[float(j) for j in range(m + 1)]]
    last_in_src: dict[str, int] = {}  # char -> last index i' < i with src[i'] == char
    for i, a in enumerate(src):
        prev = cost[i]
        subs = sub_costs_from(a)
        # Cell (i+1, j+1) reads diag = prev[j], up = prev[j+1], left = the cell just written.
        diag = prev[0]
        left = diag + 1
        row = [left]
        last_a = -1  # last j' < j with tgt[j'] == a
        for j, b, up in zip(range(m), tgt, prev[1:]):
            if a == b:
                left = diag
                last_a = j
            else:
                s = subs.get(b)
                if s is None:
                    s = sub_cost(a, b)
                best = diag + s
                if up + 1 < best:
                    best = up + 1
                if left + 1 < best:
                    best = left + 1
                if last_a >= 0 and b in last_in_src:
                    k_min = max(j - last_a, i - last_in_src[b])
                    if k_min <= i and k_min <= j:
                        trans = _transposition(src, tgt, cost, i, j, k_min)[0]
                        if trans < best:
                            best = trans
                left = best
            row.append(left)
            diag = up
        cost.append(row)
        last_in_src[a] = i
    return cost


def _transposition(src: list[str], tgt: list[str], cost: list[list[float]], i: int, j: int,
                   k_min: int = 1) -> tuple[float, int]:
    """(cost, k) of swapping the windows src[i-k:i+1] / tgt[j-k:j+1] (ChERRANT's loop: walk
    back along the diagonal while its cost changes; stop at the first anagram window).
    Windows shorter than k_min + 1 are known not to be anagrams and are not compared."""
    k = 1
    while i - k >= 0 and j - k >= 0 and cost[i - k + 1][j - k + 1] != cost[i - k][j - k]:
        if k >= k_min and sorted(src[i - k:i + 1]) == sorted(tgt[j - k:j + 1]):
            return cost[i - k][j - k] + k, k
        k += 1
    return _INF, k


def cell_ops(src: list[str], tgt: list[str], cost: list[list[float]], i: int, j: int) -> tuple:
    """The operations that reach cell (i, j) at its minimal cost, in ChERRANT's order
    T<k>, S, I, D (only "M" where the chars are equal)."""
    if i == 0:
        return ("I",)
    if j == 0:
        return ("D",)
    a, b = src[i - 1], tgt[j - 1]
    if a == b:
        return ("M",)
    trans, k = _transposition(src, tgt, cost, i - 1, j - 1)
    costs = (trans, cost[i - 1][j - 1] + sub_cost(a, b), cost[i][j - 1] + 1, cost[i - 1][j] + 1)
    best = min(costs)
    return tuple(name for name, c in zip((f"T{k + 1}", "S", "I", "D"), costs) if c == best)


def cheapest_alignments(src: list[str], tgt: list[str]) -> Iterator[list[AlignOp]]:
    """Yield every minimal-cost alignment in ChERRANT's order (only the first one when
    |len(src) - len(tgt)| > 10; at most MAX_ALIGNMENTS)."""
    cost = cost_matrix(src, tgt)
    first_only = abs(len(src) - len(tgt)) > 10
    # Iterative depth-first search from the bottom-right corner; a path is built backwards.
    stack: list[tuple[int, int, tuple]] = [(len(src), len(tgt), ())]
    found = 0
    ops_seen: dict[tuple[int, int], tuple] = {}  # cells shared by several paths
    while stack and found < MAX_ALIGNMENTS:
        i, j, path = stack.pop()
        if i + j == 0:
            found += 1
            yield _unwind(path)
            continue
        choices = ops_seen.get((i, j))
        if choices is None:
            choices = cell_ops(src, tgt, cost, i, j)
            ops_seen[i, j] = choices = choices[:1] if first_only else choices
        for op in reversed(choices):  # reversed: the stack pops the first choice first
            stack.append(_step(op, i, j, path))


def _step(op: str, i: int, j: int, path: tuple) -> tuple[int, int, tuple]:
    if op == "M" or op == "S":
        return i - 1, j - 1, ((op, i - 1, i, j - 1, j), path)
    if op == "D":
        return i - 1, j, ((op, i - 1, i, j, j), path)
    if op == "I":
        return i, j - 1, ((op, i, i, j - 1, j), path)
    k = int(op[1:])
    return i - k, j - k, ((op, i - k, i, j - k, j), path)


def _unwind(path: tuple) -> list[AlignOp]:
    """The linked list (last op first) as a left-to-right list."""
    out = []
    while path:
        op, path = path
        out.append(op)
    return out
