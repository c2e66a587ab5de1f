"""Confusion candidates judged on both sides of the character (`gec eval --decoding rescore`).

The greedy confusion decoder (`zhlora.gec.constrained`) decides position i from the left
context of the answer only. This decoder also lets the characters after i vote, in two
passes over the same model (base, base + adapter or merged, whichever is evaluated):

1. propose: one teacher-forced forward of the unchanged sentence per view gives, at every
   position i and for each confusion candidate c, its left-context lead
       lead_v(c at i) = log p_v(c | left context) - log p_v(s_i | left context)
   for two views of the sentence: `answer` (the sentence as the answer to the GEC prompt,
   which the adapter was trained on) and `text` (the sentence as plain text,
   `<s> sentence </s>`, the base's pretraining format). The `top_k` candidates per position
   whose weighted lead  answer_weight * lead_answer + lm_weight * lead_text  exceeds
   `propose` go on.
2. verify: each proposed sentence (the source with s_i -> c, nothing else changed) is read
   as plain text to its end token, and the change is made when

       score(c at i) = answer_weight * lead_answer(c at i)
                       + lm_weight * [log P_text(edited) - log P_text(source)]  >  margin

   At most one change per position (the best); changes at different positions are judged
   independently against the source and all applied.

Why the answer view only leads: reading every proposal as a whole prompted answer costs a
~3x longer row and, on the demo's dev sets, scored no better than its left lead (see
docs/demo.md). Only substitutions inside the confusion sets are made, as with the greedy
decoder, and it needs one token per Chinese character. Cost per sentence: one forward per
view plus one short plain-text row per proposal (`top_k` and `propose` bound them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from zhlora.errors import ZhloraError

DEFAULT_MARGIN = 8.0
DEFAULT_LM_WEIGHT = 1.0
DEFAULT_ANSWER_WEIGHT = 0.25
DEFAULT_TOP_K = 2
DEFAULT_PROPOSE = -1.0


@dataclass
class RescoreOptions:
    """Defaults chosen on synthetic pairs from training sentences (docs/demo.md)."""
    margin: float = DEFAULT_MARGIN             # score (nats) a change needs
    lm_weight: float = DEFAULT_LM_WEIGHT       # weight of the plain-text whole-sentence gain
    answer_weight: float = DEFAULT_ANSWER_WEIGHT   # weight of the answer's left-context lead
    top_k: int = DEFAULT_TOP_K                 # candidates per position sent to verification
    propose: float = DEFAULT_PROPOSE           # weighted left lead a candidate needs to be proposed

    def check(self) -> None:
        if self.top_k < 1:
            raise ZhloraError(f"rescore top-k must be at least 1, got {self.top_k} (e.g. --top-k 2)")
        if self.lm_weight < 0 or self.answer_weight < 0 or self.lm_weight + self.answer_weight == 0:
            raise ZhloraError(f"--lm-weight {self.lm_weight} and --answer-weight {self.answer_weight}: "
                              "both must be >= 0 and one of them > 0")


@dataclass
class View:
    """One way of reading a sentence: prefix token ids per source, and its weight."""
    prefixes: list[list[int]]
    weight: float


def _forward(model, rows: list[list[int]], pad: int) -> torch.Tensor:
    """Log-probabilities (B, T, V) of right-padded rows (positions are 0..len-1 either way)."""
    from zhlora.infer.batching import pad_rows

    ids, mask = pad_rows(rows, pad, next(model.parameters()).device, side="right")
    return torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1).cpu()


def _batches(items: list, rows: list[list[int]], batch_size: int, bar=None):
    """(chunk of items, their rows), longest rows first so padding stays small; `bar` (a progress
    bar counting rows) moves on after each chunk."""
    order = sorted(range(len(items)), key=lambda k: -len(rows[k]))
    for s in range(0, len(order), batch_size):
        ks = order[s:s + batch_size]
        yield [items[k] for k in ks], [rows[k] for k in ks]
        if bar is not None:
            bar.update(len(ks))


def propose(model, view: View, answers: list[list[int]], alts, pad_id: int,
            batch_size: int, bar=None) -> dict[tuple[int, int, int], float]:
    """{(sentence, position, candidate id): weighted left-context lead over the source char}."""
    eos_rows = [view.prefixes[n] + a for n, a in enumerate(answers)]
    leads: dict[tuple[int, int, int], float] = {}
    for ns, rows in _batches(list(range(len(answers))), eos_rows, batch_size, bar):
        lp = _forward(model, rows, pad_id)                            # (B, T, V)
        for b, n in enumerate(ns):
            start = len(view.prefixes[n]) - 1                         # predicts answer char 0
            for i, cands in enumerate(alts[n]):
                if cands:
                    row = lp[b, start + i]
                    lead = (row[cands] - row[answers[n][i]]) * view.weight
                    leads.update({(n, i, c): v for c, v in zip(cands, lead.tolist())})
    return leads


def pick_proposals(leads: dict, opts: RescoreOptions) -> list[tuple[int, int, int]]:
    """The top_k candidates per position whose lead exceeds opts.propose."""
    by_pos: dict[tuple[int, int], list[tuple[float, int]]] = {}
    for (n, i, c), v in leads.items():
        if v > opts.propose:
            by_pos.setdefault((n, i), []).append((v, c))
    return [(n, i, c) for (n, i), vs in sorted(by_pos.items())
            for _, c in sorted(vs, key=lambda x: (-x[0], x[1]))[:opts.top_k]]


def verify_rows(props: list[tuple[int, int, int]]) -> int:
    """How many rows `verify` reads: one unchanged row per sentence with a proposal, plus one per
    proposal."""
    return len({p[0] for p in props}) + len(props)


def verify(model, view: View, answers: list[list[int]], props: list[tuple[int, int, int]],
           pad_id: int, batch_size: int, bar=None) -> dict[tuple[int, int, int], float]:
    """{proposal: weighted whole-sentence log-prob gain of the edited over the source row}."""
    items = [(n, -1, -1) for n in sorted({p[0] for p in props})] + list(props)
    rows = []
    for n, i, c in items:
        answer = list(answers[n])
        if i >= 0:
            answer[i] = c
        rows.append(view.prefixes[n] + answer)
    token_lp: dict[tuple[int, int, int], torch.Tensor] = {}
    for chunk, chunk_rows in _batches(items, rows, batch_size, bar):
        lp = _forward(model, chunk_rows, pad_id)                      # (B, T, V)
        for b, (n, i, c) in enumerate(chunk):
            p, r = len(view.prefixes[n]), chunk_rows[b]
            nxt = torch.tensor(r[p:], dtype=torch.long)               # answer tokens (L+1,)
            token_lp[(n, i, c)] = lp[b, p - 1:len(r) - 1].gather(1, nxt[:, None])[:, 0]
    return {(n, i, c): view.weight * float((token_lp[(n, i, c)][i:] - token_lp[(n, -1, -1)][i:]).sum())
            for n, i, c in props}


def correct_rescored(engine, sources: list[str], adapter: str | None = None,
                     opts: RescoreOptions | None = None, batch_size: int = 16, confusion=None,
                     progress: bool = False) -> list[str]:
    """Corrected sentences (same length as their sources), in input order."""
    from zhlora.gec.confusion import load_confusion
    from zhlora.gec.constrained import build_choices, candidate_table, require_char_vocab
    from zhlora.gec.prompt import gec_conversation
    from zhlora.infer.batching import pad_id
    from zhlora.progress import progress_bar

    opts = opts or RescoreOptions()
    opts.check()
    tok = engine.tokenizer
    require_char_vocab(tok, "rescore", sources)
    confusion = confusion or load_confusion("".join(tok.get_vocab()), prefer="auto")
    choices = build_choices(sources, tok, candidate_table(tok, confusion))
    answers = [[k if k >= 0 else tok.unk_token_id for k in keep] + [tok.eos_token_id]
               for keep in choices.keep]                              # (N, len_i + 1)
    answer = View([engine.encode(gec_conversation(s), adapter) for s in sources], opts.answer_weight)
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else [tok.eos_token_id]
    text = View([bos] * len(sources), opts.lm_weight)
    pad = pad_id(tok)
    # counts forward rows: one per sentence per view to propose, then the verification rows,
    # added to the total once the proposals are known
    bar = progress_bar(len(sources) * (bool(answer.weight) + bool(text.weight)), progress, unit="row")
    with engine.using(adapter) as model:
        lead_a = propose(model, answer, answers, choices.alts, pad, batch_size, bar) if answer.weight else {}
        lead_t = propose(model, text, answers, choices.alts, pad, batch_size, bar) if text.weight else {}
        keys = lead_a.keys() | lead_t.keys()
        props = pick_proposals({k: lead_a.get(k, 0.0) + lead_t.get(k, 0.0) for k in keys}, opts)
        gain_t = {}
        if text.weight:
            bar.grow(verify_rows(props))
            gain_t = verify(model, text, answers, props, pad, batch_size, bar)
    bar.close()
    gains = {k: lead_a.get(k, 0.0) + gain_t.get(k, 0.0) for k in props}
    return apply_gains(sources, gains, opts.margin, tok)


def apply_gains(sources: list[str], gains: dict, margin: float, tok) -> list[str]:
    """Per position the best candidate whose gain exceeds `margin` replaces the source char."""
    best: dict[tuple[int, int], tuple[float, int]] = {}
    for (n, i, c), g in sorted(gains.items()):
        if g > margin and g > best.get((n, i), (float("-inf"), -1))[0]:
            best[(n, i)] = (g, c)
    out = [list(s) for s in sources]
    for (n, i), (_, c) in best.items():
        out[n][i] = tok.convert_ids_to_tokens(c)
    return ["".join(o) for o in out]

