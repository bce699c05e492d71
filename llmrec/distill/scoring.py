"""Pair logits of a rec-LM: how much more likely item ``first`` is than ``second`` as the user's next item.

A rec-LM's score of an item is its log-probability as the next item token, a softmax over item tokens. For
two items the softmax's normaliser cancels, so the pair logit ``z = log p(first) - log p(second)`` is the
difference of the two output logits at the history's last position, ``h . (w_first - w_second)`` (the output
head is tied to the input embeddings and has no bias), and ``P(first preferred) = sigmoid(z / T)``. Nothing
else of the output layer is computed.

Histories that are token-prefixes of one another share one forward pass (a causal model's state at position
``t`` does not depend on later tokens): unique encoded histories are sorted, and each that a later one extends
is read from the longer one's hidden states. A user's transfer pairs, whose histories all cut one window of
events, cost one forward pass together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from llmrec.reclm.model import composition_tensors, input_table, pad_right
from llmrec.reclm.tokens import BOS_ID, rating_token

if TYPE_CHECKING:
    import torch

    from llmrec.reclm import RecLM, Vocab

#: Forward passes (groups of prefix-sharing histories) per batch when scoring without gradients.
CHUNK = 64


@dataclass
class Plan:
    """Which forward passes score which pairs: ``leaders[g]`` is group g's longest token sequence; pair i is read
    at position ``pos[i]`` of group ``group[i]``; ``first``/``second`` are item token ids (-1: unknown item)."""

    leaders: list[list[int]]
    group: np.ndarray
    pos: np.ndarray
    first: np.ndarray
    second: np.ndarray
    members: list[np.ndarray]  # pair indices per group

    def __len__(self) -> int:
        return len(self.group)


class Encoder:
    """:meth:`Vocab.encode_events <llmrec.reclm.Vocab.encode_events>` with its lookups memoised (the same
    tokens, several times faster: per-sample latency is mostly Python for a small model)."""

    def __init__(self, vocab: Vocab, max_events: int) -> None:
        self.vocab = vocab
        self.max_events = max_events
        self._items: dict[str, int | None] = {}
        self._ratings: dict[Any, int] = {}

    def __call__(self, events: Sequence[tuple[str, float | None]]) -> tuple[int, ...]:
        items, ratings, vocab = self._items, self._ratings, self.vocab
        out: list[int] = []
        for item_id, rating in events:
            tid = items.get(item_id, -2)
            if tid == -2:
                tid = items[item_id] = vocab.item_token(item_id)
            if tid is None:
                continue
            rid = ratings.get(rating)
            if rid is None:
                rid = vocab.id_of(rating_token(rating))
                if rating is None or rating == rating:  # never memoise NaN (it is not equal to itself)
                    ratings[rating] = rid
            out.append(tid)
            out.append(rid)
        if self.max_events <= 0:
            return (BOS_ID,)
        return (BOS_ID, *out[-2 * self.max_events:])


def make_plan(vocab: Vocab, max_events: int, histories: Sequence[Sequence[tuple[str, float | None]]],
              pairs: Sequence[tuple[str, str]], encoder: Encoder | None = None) -> Plan:
    """Encode each distinct history once and group histories that are token-prefixes of a longer one."""
    if len(histories) != len(pairs):
        raise ValueError(f"{len(histories)} histories but {len(pairs)} pairs")
    encode = encoder or Encoder(vocab, max_events)
    encoded: dict[Any, tuple[int, ...]] = {}
    tokens_of: list[tuple[int, ...]] = []
    for h in histories:
        key = h if isinstance(h, tuple) else tuple(h)
        tok = encoded.get(key)
        if tok is None:
            tok = encoded[key] = encode(key)
        tokens_of.append(tok)
    leaders: list[tuple[int, ...]] = []
    group_of: dict[tuple[int, ...], int] = {}
    for tok in sorted(set(tokens_of)):
        if leaders and len(tok) >= len(leaders[-1]) and tok[: len(leaders[-1])] == leaders[-1]:
            leaders[-1] = tok  # extends the current group's longest sequence: every member is its prefix too
        else:
            leaders.append(tok)
        group_of[tok] = len(leaders) - 1
    n = len(tokens_of)
    group = np.fromiter((group_of[t] for t in tokens_of), dtype=np.int64, count=n)
    pos = np.fromiter((len(t) - 1 for t in tokens_of), dtype=np.int64, count=n)

    def tok(item: str) -> int:
        t = vocab.item_token(item)
        return -1 if t is None else t

    first = np.fromiter((tok(a) for a, _ in pairs), dtype=np.int64, count=n)
    second = np.fromiter((tok(b) for _, b in pairs), dtype=np.int64, count=n)
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(len(leaders) + 1))
    members = [order[bounds[g]:bounds[g + 1]] for g in range(len(leaders))]
    return Plan([list(t) for t in leaders], group, pos, first, second, members)


def group_logits(model: Any, table: torch.Tensor, plan: Plan, groups: Sequence[int],
                 device: str) -> tuple[np.ndarray, torch.Tensor]:
    """``(pair indices, z)`` for every pair of ``groups``, in one forward pass (gradients flow when enabled).
    Pairs with an unknown item get ``z = 0`` here; :func:`mask_unknown` sets their values for inference."""
    import torch

    idx = np.concatenate([plan.members[g] for g in groups]) if groups else np.zeros(0, dtype=np.int64)
    row_of = np.full(len(plan.leaders), -1, dtype=np.int64)
    row_of[np.asarray(groups, dtype=np.int64)] = np.arange(len(groups))
    ids, mask, _ = pad_right([plan.leaders[g] for g in groups], device)
    # one sequence has no padding: no mask to build (the causal mask is implied)
    hidden = model.transformer(inputs_embeds=table[ids], attention_mask=None if len(groups) == 1 else mask,
                               use_cache=False).last_hidden_state
    rows = torch.as_tensor(row_of[plan.group[idx]], dtype=torch.long, device=hidden.device)
    cols = torch.as_tensor(plan.pos[idx], dtype=torch.long, device=hidden.device)
    h = hidden[rows, cols]
    weight = model.lm_head.weight
    a = torch.as_tensor(np.maximum(plan.first[idx], 0), device=hidden.device)
    b = torch.as_tensor(np.maximum(plan.second[idx], 0), device=hidden.device)
    z = (h * (weight[a] - weight[b])).sum(dim=-1).float()
    known = torch.as_tensor((plan.first[idx] >= 0) & (plan.second[idx] >= 0), device=hidden.device)
    return idx, torch.where(known, z, torch.zeros_like(z))


def mask_unknown(plan: Plan, z: np.ndarray) -> np.ndarray:
    """An unknown item loses to a known one (``-inf``/``+inf``); two unknown items tie (0)."""
    out = z.astype(np.float64, copy=True)
    fa, fb = plan.first < 0, plan.second < 0
    out[fa & ~fb] = -np.inf
    out[~fa & fb] = np.inf
    out[fa & fb] = 0.0
    return out


def composed_table(model: Any, vocab: Vocab, device: str) -> torch.Tensor:
    comp_idx, comp_w = composition_tensors(vocab, device)
    return input_table(model.transformer.wte.weight, comp_idx, comp_w)


def plan_logits(model: Any, table: torch.Tensor, plan: Plan, device: str, chunk: int = CHUNK) -> np.ndarray:
    """Every pair's logit without gradients (groups batched by length, ``chunk`` forward passes at a time)."""
    import torch

    z = np.zeros(len(plan), dtype=np.float64)
    order = sorted(range(len(plan.leaders)), key=lambda g: len(plan.leaders[g]))
    with torch.inference_mode():
        for start in range(0, len(order), chunk):
            idx, out = group_logits(model, table, plan, order[start:start + chunk], device)
            z[idx] = out.cpu().numpy()
    return mask_unknown(plan, z)


class PairScorer:
    """Pair logits of one :class:`~llmrec.reclm.RecLM` (its composed input table computed once)."""

    def __init__(self, rec: RecLM) -> None:
        import torch

        self.rec = rec
        self._encoder = Encoder(rec.vocab, rec.config.max_events)
        with torch.inference_mode():
            self._table = composed_table(rec.model, rec.vocab, rec.device)

    def plan(self, histories: Sequence[Sequence[tuple[str, float | None]]],
             pairs: Sequence[tuple[str, str]]) -> Plan:
        return make_plan(self.rec.vocab, self.rec.config.max_events, histories, pairs, self._encoder)

    def logits(self, histories: Sequence[Sequence[tuple[str, float | None]]],
               pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """``log p(first) - log p(second)`` per pair (float64; +-inf when one item is unknown to the model)."""
        if not len(pairs):
            return np.zeros(0, dtype=np.float64)
        return plan_logits(self.rec.model, self._table, self.plan(histories, pairs), self.rec.device)


def sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


__all__ = ["CHUNK", "Encoder", "PairScorer", "Plan", "composed_table", "group_logits", "make_plan", "mask_unknown",
           "plan_logits", "sigmoid"]
