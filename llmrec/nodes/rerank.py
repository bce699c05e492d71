"""Rerankers: pure functions from candidates (and the catalog) to candidates, registered as a default plugin.

- ``rerank.mmr``: maximal marginal relevance; similarity from item embeddings (an ``embeddings`` mapping or an
  embedder ``model``), else 1 for the same category and 0 otherwise;
- ``rerank.quota``: per-category (or per-field) minimum and maximum counts or shares of the top k;
- ``rerank.rules``: boost or demote items whose metadata matches a condition;
- ``rerank.dedupe``: drop repeated ids and, optionally, repeated (normalised) titles;
- ``rerank.constraints``: keep only items in a price range, with given attribute values, not excluded;
- ``rerank.filter_seen``: drop the items the user has already seen;
- ``rerank.diversify``: cap how many items of one category the top of the list holds;
- ``rerank.explore``: a stochastic ranking (Plackett-Luce or epsilon-greedy) that reports each item's propensity,
  so that logged answers can be evaluated off-policy.

Item fields are
``id``, ``title``, ``description``, ``category`` and ``price``; any other name (or ``attributes.NAME``) is an
attribute. A field that no catalog item has is an error when the node runs (names depend on the data).
"""

from __future__ import annotations

import asyncio
import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from ..data import Catalog, Item
from ..embed import Embedder
from ..hookspecs import hookimpl
from ..node import CheckContext, NoConfig, NodeType, Problem, RunContext
from ..types import Candidates, ScoredItem, UserProfile
from .common import PerObjects, as_candidates, count_or

ITEM_FIELDS: tuple[str, ...] = ("id", "title", "description", "category", "price")
_MISSING = object()
Scalar = str | int | float | bool


# -- item fields -----------------------------------------------------------------------------------------------


def field_value(item: Item, name: str) -> Any:
    """An item's field or attribute (``attributes.NAME`` or plain ``NAME``); ``_MISSING`` when absent."""
    if name in ITEM_FIELDS:
        return getattr(item, name)
    key = name[len("attributes."):] if name.startswith("attributes.") else name
    return item.attributes.get(key, _MISSING)


_KNOWN: PerObjects[frozenset[str]] = PerObjects()


def known_fields(catalog: Catalog) -> frozenset[str]:
    """Item fields plus every attribute name some item of the catalog has (computed once per catalog)."""

    def build() -> frozenset[str]:
        names = set(ITEM_FIELDS)
        for item in catalog:
            names.update(item.attributes)
        return frozenset(names)

    return _KNOWN.get((catalog,), build)


def check_fields(node: str, names: Sequence[str], catalog: Catalog) -> None:
    """Raise a clear ValueError naming fields no catalog item has."""
    known = known_fields(catalog)
    bad = [n for n in names if (n[len("attributes."):] if n.startswith("attributes.") else n) not in known]
    if bad:
        attrs = sorted(known - set(ITEM_FIELDS))
        raise ValueError(
            f"{node}: no catalog item has field {', '.join(repr(b) for b in bad)}; item fields are "
            f"{', '.join(ITEM_FIELDS)}, attributes in this catalog: {', '.join(attrs[:20]) or 'none'}"
        )


def _rescore(cands: Candidates, items: list[ScoredItem]) -> Candidates:
    return cands.model_copy(update={"items": items})


# -- MMR ---------------------------------------------------------------------------------------------------------


class MMRConfig(NoConfig):
    lambda_: float = Field(
        0.7, ge=0.0, le=1.0, alias="lambda",
        description="Weight of relevance against novelty: 1 keeps the input order, 0 only avoids similar items.",
    )
    k: int = Field(10, ge=1, description="How many items to pick, unless the 'k' input says otherwise.")
    similarity: Literal["auto", "embedding", "category"] = Field(
        "auto", description="'auto': embeddings when given (the 'embeddings' or 'model' input), else category.",
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MMR(NodeType):
    """Maximal marginal relevance: repeatedly pick the candidate maximising
    ``lambda * relevance - (1 - lambda) * max similarity to the items already picked``, where relevance is
    the input score min-max normalised to 0..1. Picked items keep their scores and sources."""

    name = "rerank.mmr"
    inline = True
    description = "Reorder candidates by maximal marginal relevance (embedding or category similarity)."
    Config = MMRConfig

    def __init__(self, config: MMRConfig) -> None:
        super().__init__(config)
        self._vectors: PerObjects[dict[str, np.ndarray]] = PerObjects()

    @classmethod
    def check(cls, config: MMRConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        given = ctx.declared_inputs
        if config.similarity == "embedding" and not given & {"embeddings", "model"}:
            return [Problem("similarity 'embedding' needs the 'embeddings' or the 'model' input", field="similarity",
                            hint="Add model: ${resources.NAME} (an embedder) under 'inputs:'.")]
        if config.similarity == "category" and "catalog" not in given:
            return [Problem("similarity 'category' needs the 'catalog' input", field="similarity")]
        if config.similarity == "auto" and not given & {"embeddings", "model", "catalog"}:
            return ["rerank.mmr needs 'catalog' (category similarity), 'embeddings' or 'model' among its inputs"]
        return []

    def _model_vectors(self, catalog: Catalog, model: Embedder) -> dict[str, np.ndarray]:
        def build() -> dict[str, np.ndarray]:
            ids, matrix = model.embed_items(catalog)
            return dict(zip(ids, np.asarray(matrix, dtype=np.float32)))

        return self._vectors.get((catalog, model), build)

    async def warm(self, catalog: Catalog | None = None, model: Embedder | None = None, **_: Any) -> None:
        if catalog is not None and model is not None and self.config.similarity != "category":
            await asyncio.to_thread(self._model_vectors, catalog, model)

    async def run(
        self,
        candidates: Candidates,
        catalog: Catalog | None = None,
        embeddings: dict[str, list[float]] | None = None,
        model: Embedder | None = None,
        k: int | None = None,
    ) -> Candidates:
        cands = as_candidates(candidates)
        assert cands is not None
        items = cands.items
        n = min(count_or(k, self.config.k), len(items))
        if n == 0:
            return _rescore(cands, [])
        sim = self._similarity(items, catalog, embeddings, model)
        scores = np.array([c.score for c in items], dtype=np.float64)
        lo, hi = scores.min(), scores.max()
        relevance = (scores - lo) / (hi - lo) if hi > lo else np.ones(len(items))
        lam = self.config.lambda_
        picked: list[int] = []
        max_sim = np.zeros(len(items))
        available = np.ones(len(items), dtype=bool)
        for _ in range(n):
            value = np.where(available, lam * relevance - (1 - lam) * max_sim, -np.inf)
            best = int(np.argmax(value))  # the first of equal values: input order breaks ties
            picked.append(best)
            available[best] = False
            max_sim = np.maximum(max_sim, sim[best])
        return _rescore(cands, [items[i] for i in picked])

    def _similarity(
        self, items: list[ScoredItem], catalog: Catalog | None, embeddings: Mapping[str, Sequence[float]] | None,
        model: Embedder | None,
    ) -> np.ndarray:
        mode = self.config.similarity
        vectors: Mapping[str, Any] | None = None
        if mode != "category":
            if embeddings is not None:
                vectors = embeddings
            elif model is not None and catalog is not None:
                vectors = self._model_vectors(catalog, model)
            elif mode == "embedding":
                raise ValueError("rerank.mmr: similarity 'embedding' needs 'embeddings', or 'model' with 'catalog'")
        if vectors is not None:
            missing = [c.id for c in items if c.id not in vectors]
            if missing:
                raise ValueError(f"rerank.mmr: no embedding for {len(missing)} candidate(s), e.g. {missing[0]!r}")
            m = np.array([np.asarray(vectors[c.id], dtype=np.float64) for c in items])
            norms = np.linalg.norm(m, axis=1, keepdims=True)
            m = m / np.where(norms > 0, norms, 1.0)
            return m @ m.T
        if catalog is None:
            raise ValueError("rerank.mmr: category similarity needs the 'catalog' input")
        cats = [(it.category if (it := catalog.get(c.id)) is not None else "") for c in items]
        return np.array([[1.0 if a and a == b else 0.0 for b in cats] for a in cats])


# -- quota -------------------------------------------------------------------------------------------------------


class QuotaRule(NoConfig):
    min: int | None = Field(None, ge=0, description="At least this many items (when the candidates have them).")
    max: int | None = Field(None, ge=0, description="At most this many items.")
    min_share: float | None = Field(None, ge=0.0, le=1.0, description="At least this share of k (rounded up).")
    max_share: float | None = Field(None, ge=0.0, le=1.0, description="At most this share of k (rounded down).")

    @model_validator(mode="after")
    def _one_each(self) -> QuotaRule:
        if self.min is not None and self.min_share is not None:
            raise ValueError("give 'min' or 'min_share', not both")
        if self.max is not None and self.max_share is not None:
            raise ValueError("give 'max' or 'max_share', not both")
        return self

    def bounds(self, k: int) -> tuple[int, int]:
        lo = self.min if self.min is not None else math.ceil(self.min_share * k) if self.min_share is not None else 0
        hi = self.max if self.max is not None else math.floor(self.max_share * k) if self.max_share is not None else k
        return lo, hi


class QuotaConfig(NoConfig):
    field: str = Field("category", min_length=1, description="Item field or attribute whose values get quotas.")
    quotas: dict[str, QuotaRule] = Field(default_factory=dict, description="Per value: min/max counts or shares.")
    default: QuotaRule = Field(default_factory=QuotaRule, description="The quota of every value not listed.")
    k: int = Field(10, ge=1, description="How many items, unless the 'k' input says otherwise.")


class Quota(NodeType):
    """Pick k candidates meeting per-value quotas: first each value's minimum (its best items), then the rest in
    input order while under each value's maximum. Maxima are hard: the list comes out short rather than
    break one. The picked items keep their input order."""

    name = "rerank.quota"
    inline = True
    description = "Pick k candidates with per-category (or per-field) minimum and maximum counts or shares."
    Config = QuotaConfig

    @classmethod
    def check(cls, config: QuotaConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        problems: list[str | tuple[str, str] | Problem] = []
        for value, rule in config.quotas.items():
            lo, hi = rule.bounds(config.k)
            if lo > hi:
                problems.append(("quotas", f"quota of {value!r}: minimum {lo} is above maximum {hi} (k = {config.k})"))
        mins = sum(rule.bounds(config.k)[0] for rule in config.quotas.values())
        if mins > config.k:
            problems.append(("quotas", f"the minimums add up to {mins}, more than k = {config.k}"))
        return problems

    async def run(self, candidates: Candidates, catalog: Catalog, k: int | None = None) -> Candidates:
        cands = as_candidates(candidates)
        assert cands is not None
        cfg = self.config
        n = count_or(k, cfg.k)
        check_fields(self.name, [cfg.field], catalog)
        values = []
        for c in cands.items:
            item = catalog.get(c.id)
            v = field_value(item, cfg.field) if item is not None else _MISSING
            values.append("" if v is _MISSING or v is None else str(v))
        bounds = {v: (cfg.quotas.get(v) or cfg.default).bounds(n) for v in set(values)}
        taken: dict[str, int] = {}
        chosen: set[int] = set()
        for value, rule in cfg.quotas.items():  # minimums first, each value's best items
            need = min(rule.bounds(n)[0], bounds.get(value, (0, 0))[1])
            for i, v in enumerate(values):
                if taken.get(value, 0) >= need or len(chosen) >= n:
                    break
                if v == value:
                    chosen.add(i)
                    taken[value] = taken.get(value, 0) + 1
        for i, v in enumerate(values):
            if len(chosen) >= n:
                break
            if i not in chosen and taken.get(v, 0) < bounds[v][1]:
                chosen.add(i)
                taken[v] = taken.get(v, 0) + 1
        return _rescore(cands, [cands.items[i] for i in sorted(chosen)])


# -- rules -------------------------------------------------------------------------------------------------------


class Rule(NoConfig):
    field: str = Field(min_length=1, description="Item field (id, title, description, category, price) or attribute.")
    op: Literal["eq", "ne", "in", "lt", "gt", "contains"] = "eq"
    value: Scalar | list[Scalar]
    boost: float | None = Field(None, description="Add this to the score of matching items (negative demotes).")
    multiply: float | None = Field(None, description="Multiply the score of matching items by this.")

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if (self.boost is None) == (self.multiply is None):
            raise ValueError("give exactly one of 'boost' or 'multiply'")
        if self.op == "in" and not isinstance(self.value, list):
            raise ValueError("op 'in' needs a list value, e.g. value: [books, music]")
        if self.op != "in" and isinstance(self.value, list):
            raise ValueError(f"op '{self.op}' needs a single value, not a list (use op 'in' for a list)")
        if self.op in ("lt", "gt") and (isinstance(self.value, bool) or not isinstance(self.value, (int, float))):
            raise ValueError(f"op '{self.op}' needs a number, got {self.value!r}")
        return self

    def matches(self, item: Item) -> bool:
        v = field_value(item, self.field)
        if v is _MISSING or v is None:
            return self.op == "ne"
        op, want = self.op, self.value
        if op == "eq":
            return _same(v, want)
        if op == "ne":
            return not _same(v, want)
        if op == "in":
            return any(_same(v, w) for w in want)  # type: ignore[union-attr]
        if op == "contains":
            return str(want).casefold() in str(v).casefold()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return v < want if op == "lt" else v > want  # type: ignore[operator]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.casefold() == b.casefold()
    return bool(a == b)


class RulesConfig(NoConfig):
    rules: list[Rule] = Field(min_length=1, description="Applied in order to every candidate's score.")
    source: str = Field("rules", min_length=1, description="Name under which the adjusted score is recorded.")


class Rules(NodeType):
    """Business rules: each matching rule adds ``boost`` to, or multiplies by ``multiply``, a candidate's score
    (in order); the list is then re-sorted by the new scores (ties keep the input order). A missing field
    matches only ``ne``."""

    name = "rerank.rules"
    inline = True
    description = "Boost or demote candidates whose item metadata matches rules (eq, ne, in, lt, gt, contains)."
    Config = RulesConfig

    async def run(self, candidates: Candidates, catalog: Catalog) -> Candidates:
        cands = as_candidates(candidates)
        assert cands is not None
        rules = self.config.rules
        check_fields(self.name, [r.field for r in rules], catalog)
        scored = []
        for position, c in enumerate(cands.items):
            item = catalog.get(c.id)
            score = c.score
            if item is not None:
                for rule in rules:
                    if rule.matches(item):
                        score = score * rule.multiply if rule.multiply is not None else score + rule.boost  # type: ignore[operator]
            scored.append((-score, position, c, score))
        scored.sort(key=lambda s: (s[0], s[1]))
        source = self.config.source
        items = [c if score == c.score else ScoredItem(id=c.id, score=round(score, 8), sources={**c.sources, source: round(score, 8)})
                 for _, _, c, score in scored]
        return _rescore(cands, items)


# -- dedupe ------------------------------------------------------------------------------------------------------

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise_title(title: str) -> str:
    """Case-folded words of a title, punctuation and extra spaces dropped."""
    return " ".join(_NON_WORD.sub(" ", title.casefold()).split())


class DedupeConfig(NoConfig):
    by_title: bool = Field(False, description="Also drop items whose normalised title was already seen (needs catalog).")


class Dedupe(NodeType):
    """Keep the first occurrence of each id (and, with ``by_title``, of each normalised title)."""

    name = "rerank.dedupe"
    inline = True
    description = "Drop repeated ids, and optionally repeated titles (case, punctuation and spacing ignored)."
    Config = DedupeConfig

    @classmethod
    def check(cls, config: DedupeConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        if config.by_title and "catalog" not in ctx.declared_inputs:
            return [Problem("by_title needs the 'catalog' input", field="by_title",
                            hint="Add catalog: ${resources.NAME.catalog} under 'inputs:'.")]
        return []

    async def run(self, candidates: Candidates, catalog: Catalog | None = None) -> Candidates:
        cands = as_candidates(candidates)
        assert cands is not None
        if self.config.by_title and catalog is None:
            raise ValueError("rerank.dedupe: by_title needs the 'catalog' input")
        ids: set[str] = set()
        titles: set[str] = set()
        kept = []
        for c in cands.items:
            if c.id in ids:
                continue
            ids.add(c.id)
            if self.config.by_title and catalog is not None and (item := catalog.get(c.id)) is not None:
                title = normalise_title(item.title)
                if title and title in titles:
                    continue
                titles.add(title)
            kept.append(c)
        return _rescore(cands, kept)


# -- constraints -------------------------------------------------------------------------------------------------


class ConstraintsConfig(NoConfig):
    min_price: float | None = Field(None, ge=0, description="Drop items cheaper than this.")
    max_price: float | None = Field(None, ge=0, description="Drop items dearer than this.")
    keep_unpriced: bool = Field(False, description="With a price range, keep items that have no price.")
    equals: dict[str, Scalar] = Field(
        default_factory=dict, description="Field or attribute -> required value, e.g. {in_stock: true}."
    )
    exclude_ids: list[str] = Field(default_factory=list, description="Ids never to return.")

    @model_validator(mode="after")
    def _range(self) -> ConstraintsConfig:
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise ValueError(f"min_price {self.min_price} is above max_price {self.max_price}")
        return self


class Constraints(NodeType):
    """Hard filters: a price range, required field/attribute values, and ids to exclude (from the config and
    the optional 'exclude' input). Items missing from the catalog are dropped when any item constraint is set."""

    name = "rerank.constraints"
    inline = True
    description = "Keep candidates in a price range, with required attribute values, and not excluded."
    Config = ConstraintsConfig

    @classmethod
    def check(cls, config: ConstraintsConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        needs_catalog = config.min_price is not None or config.max_price is not None or config.equals
        if needs_catalog and "catalog" not in ctx.declared_inputs:
            return [Problem("price and attribute constraints need the 'catalog' input",
                            hint="Add catalog: ${resources.NAME.catalog} under 'inputs:'.")]
        return []

    async def run(
        self, candidates: Candidates, catalog: Catalog | None = None, exclude: list[str] | None = None
    ) -> Candidates:
        cands = as_candidates(candidates)
        assert cands is not None
        cfg = self.config
        excluded = set(cfg.exclude_ids) | set(exclude or ())
        priced = cfg.min_price is not None or cfg.max_price is not None
        by_item = priced or bool(cfg.equals)
        if by_item:
            if catalog is None:
                raise ValueError("rerank.constraints: price and attribute constraints need the 'catalog' input")
            check_fields(self.name, list(cfg.equals), catalog)
        kept = []
        for c in cands.items:
            if c.id in excluded:
                continue
            if by_item:
                item = catalog.get(c.id) if catalog is not None else None
                if item is None or not self._allowed(item, priced):
                    continue
            kept.append(c)
        return _rescore(cands, kept)

    def _allowed(self, item: Item, priced: bool) -> bool:
        cfg = self.config
        if priced:
            if item.price is None:
                if not cfg.keep_unpriced:
                    return False
            elif (cfg.min_price is not None and item.price < cfg.min_price) or (
                    cfg.max_price is not None and item.price > cfg.max_price):
                return False
        for name, want in cfg.equals.items():
            v = field_value(item, name)
            if v is _MISSING or not _same(v, want):
                return False
        return True


# -- seen items and category caps -------------------------------------------------------------------------------------


class FilterSeenConfig(NoConfig):
    pass


class FilterSeen(NodeType):
    """Drop the items the user has already interacted with."""

    name = "rerank.filter_seen"
    inline = True
    description = "Remove items the user has already seen from the candidates."
    Config = FilterSeenConfig

    async def run(self, candidates: Candidates, profile: UserProfile) -> Candidates:
        cands = as_candidates(candidates)
        assert cands is not None
        if not profile.seen:
            return cands
        seen = set(profile.seen)
        return cands.model_copy(update={"items": [c for c in cands.items if c.id not in seen]})


class DiversifyConfig(NoConfig):
    max_per_category: int = Field(3, ge=1, description="At most this many items of one category, while others remain.")
    k: int = Field(10, ge=1, description="How many items, unless the 'k' input says otherwise.")


class Diversify(NodeType):
    """Greedy diversification: take candidates in score order, capping how many come from one category."""

    name = "rerank.diversify"
    inline = True
    description = "Pick k candidates in score order with at most max_per_category per category (filled if short)."
    Config = DiversifyConfig

    async def run(self, candidates: Candidates, catalog: Catalog, k: int | None = None) -> Candidates:
        cands = as_candidates(candidates)
        assert cands is not None
        n = count_or(k, self.config.k)
        cap = self.config.max_per_category
        picked: list[ScoredItem] = []
        overflow: list[ScoredItem] = []
        per_category: dict[str, int] = {}
        for c in cands.items:
            if len(picked) >= n:
                break
            item = catalog.get(c.id)
            category = item.category if item is not None else ""
            if category:
                if per_category.get(category, 0) >= cap:
                    overflow.append(c)
                    continue
                per_category[category] = per_category.get(category, 0) + 1
            picked.append(c)
        if len(picked) < n:  # the cap left too few: fill with the best of what it held back
            picked.extend(overflow[: n - len(picked)])
        return cands.model_copy(update={"items": picked})


# -- exploration ---------------------------------------------------------------------------------------------------

ExploreMethod = Literal["plackett_luce", "epsilon_greedy"]


def _tanh_sinh(level: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Tanh-sinh (double exponential) quadrature on (0, 1): nodes and weights. It copes with the integrand's
    endpoint behaviour below (powers ``u ** r`` with r far from 1); level 5 (51 nodes) gives about 1e-8."""
    h = 4.0 / 2.0 ** level
    t = np.arange(-int(3.2 / h), int(3.2 / h) + 1) * h
    s = 0.5 * np.pi * np.sinh(t)
    u = 1.0 / (1.0 + np.exp(-2.0 * s))  # (1 + tanh(s)) / 2, accurate near both ends
    w = h * 0.25 * np.pi * np.cosh(t) / np.cosh(s) ** 2
    keep = (u > 0.0) & (u < 1.0) & (w > 0.0)
    return u[keep], w[keep]


_NODES, _WEIGHTS = _tanh_sinh()
_LOG_NODES = np.log(_NODES)


def plackett_luce_weights(scores: Sequence[float] | np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``exp(score / temperature)`` scaled so the largest is 1 (NaN and -inf scores weigh 0; all of them: 1)."""
    z = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf) / temperature
    top = z.max() if z.size else 0.0
    if not np.isfinite(top):
        return np.ones(z.size)
    return np.exp(z - top)  # type: ignore[no-any-return]


def plackett_luce_marginals(weights: np.ndarray, items: Sequence[int], positions: Sequence[int]) -> np.ndarray:
    """The probability that a Plackett-Luce ranking (items drawn one position after another, each with
    probability proportional to its weight among those left) puts ``items[b]`` at ``positions[b]`` (1 = first),
    for each b: the marginal, over every ordering of the items above it.

    Exact up to quadrature (about 1e-8): PL is an exponential race (item i fires at T_i ~ Exp(w_i); the ranking is
    the firing order), so P(a at position j) = integral over the time a fires of P(exactly j - 1 others fired
    before), which with u = exp(-w_a t) is the integral over (0, 1) of the coefficient of z^(j-1) in
    prod_{i != a} (u^(w_i/w_a) + (1 - u^(w_i/w_a)) z), a polynomial built item by item."""
    w = np.asarray(weights, dtype=np.float64)
    idx = np.asarray(items, dtype=np.int64)
    pos = np.asarray(positions, dtype=np.int64)
    if idx.size == 0:
        return np.zeros(0)
    depth = int(pos.max())
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = w[None, :] / w[idx][:, None]  # (B, n): another item's rate in units of the item's own
        q = np.exp(ratio[:, None, :] * _LOG_NODES[None, :, None])  # (B, N, n): P(not fired yet)
    q = np.nan_to_num(q, nan=1.0)
    q[np.arange(idx.size), :, idx] = 1.0  # the item itself is not among the others
    coef = np.zeros((idx.size, _NODES.size, depth))
    coef[:, :, 0] = 1.0
    for i in range(w.size):
        qi = q[:, :, i:i + 1]
        nxt = coef * qi
        nxt[:, :, 1:] += coef[:, :, :-1] * (1.0 - qi)
        coef = nxt
    at = coef[np.arange(idx.size), :, pos - 1]  # (B, N)
    return np.clip(at @ _WEIGHTS, 0.0, 1.0)  # type: ignore[no-any-return]


def position_probabilities(scores: np.ndarray, remaining: np.ndarray, method: ExploreMethod, *,
                           temperature: float = 1.0, epsilon: float = 0.1) -> np.ndarray:
    """Plackett-Luce's probability of each item being placed next given which items are still ``remaining`` (a
    bool mask; placed items get 0): proportional to ``exp(score / temperature)``, summing to 1. (Epsilon-greedy
    is drawn as a whole list, see :func:`explore_draw`; here it is its greedy-or-uniform mixture per position.)"""
    probs = np.zeros(len(scores), dtype=np.float64)
    idx = np.flatnonzero(remaining)
    if idx.size == 0:
        return probs
    if method == "plackett_luce":
        w = plackett_luce_weights(np.asarray(scores)[idx], temperature)
        probs[idx] = w / w.sum()
    else:
        probs[idx] = epsilon / idx.size
        probs[idx[0]] += 1.0 - epsilon
    return probs


def explore_draw(scores: Sequence[float], n: int, method: ExploreMethod, rng: np.random.Generator, *,
                 temperature: float = 1.0, epsilon: float = 0.1) -> tuple[list[int], list[float], list[float]]:
    """Draw a ranking of ``n`` of the items: the indices chosen (best position first), each one's propensity
    (the marginal probability that the policy puts that item at that position) and its cascade probability
    (that the policy's first positions are exactly the items shown down to this one; the last is the whole
    list's probability).

    ``plackett_luce``: position by position, each with probability proportional to ``exp(score / temperature)``
    among the items left; marginals by :func:`plackett_luce_marginals`. ``epsilon_greedy``: the first n items in
    input order, or with probability ``epsilon`` a uniformly random list of n distinct items (as
    ``llmrec.eval.ope.epsilon_greedy_dist``), so an item's marginal is ``(1 - epsilon) [greedy there] +
    epsilon / m`` of m items."""
    values = np.asarray(scores, dtype=np.float64)
    m = values.size
    n = min(n, m)
    if n <= 0:
        return [], [], []
    if method == "epsilon_greedy":
        explore = rng.random() < epsilon
        order = [int(i) for i in (rng.permutation(m)[:n] if explore else range(n))]
        marginals = [(1.0 - epsilon) * (i == j) + epsilon / m for j, i in enumerate(order)]
        cascade, uniform, greedy = [], 1.0, True
        for j, i in enumerate(order):
            uniform /= m - j
            greedy = greedy and i == j
            cascade.append((1.0 - epsilon) * greedy + epsilon * uniform)
        return order, marginals, cascade
    weights = plackett_luce_weights(values, temperature)
    remaining = np.ones(m, dtype=bool)
    order, cascade, prob = [], [], 1.0
    for _ in range(n):
        w = np.where(remaining, weights, 0.0)
        cum = np.cumsum(w)  # inverse CDF: the first item whose cumulative weight passes u (never a weight of 0)
        pick = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), m - 1)
        prob *= float(w[pick] / cum[-1])
        order.append(pick)
        cascade.append(prob)
        remaining[pick] = False
    marginals = plackett_luce_marginals(weights, order, range(1, n + 1)).tolist()
    return order, marginals, cascade


class ExploreConfig(NoConfig):
    method: ExploreMethod = Field(
        "plackett_luce", description="'plackett_luce': position by position, each item drawn with probability "
                                     "proportional to exp(score / temperature); 'epsilon_greedy': the candidates' "
                                     "own order, or with probability epsilon a uniformly random list.")
    temperature: float = Field(1.0, gt=0.0, description="Plackett-Luce: higher is more random.")
    epsilon: float = Field(0.1, ge=0.0, le=1.0, description="Epsilon-greedy: how often the list is random.")
    k: int = Field(10, ge=1, description="How many items to draw, unless the 'k' input says otherwise.")
    seed: int | None = Field(
        None, ge=0, description="With a seed, a request's draw depends only on the seed and the request's run id (the "
                                "server's X-Request-Id), so a logged request replays to the same list; without, "
                                "every draw is fresh.")

    @model_validator(mode="after")
    def _one_method(self) -> ExploreConfig:
        if self.method == "plackett_luce" and "epsilon" in self.model_fields_set:
            raise ValueError("'epsilon' is for method 'epsilon_greedy'; Plackett-Luce uses 'temperature'")
        if self.method == "epsilon_greedy" and "temperature" in self.model_fields_set:
            raise ValueError("'temperature' is for method 'plackett_luce'; epsilon-greedy uses 'epsilon'")
        return self


class Explore(NodeType):
    """A stochastic ranking for exploration and off-policy evaluation: draws the top k of the candidates
    (Plackett-Luce over the scores, or epsilon-greedy over the input order), so every candidate has a chance at
    every position. Each drawn item's propensity (the marginal probability that the policy puts it at that
    position) goes to the trace record's ``extra["propensities"]`` ({id: probability}) and its cascade
    probability to ``extra["cascade"]``, where ``llmrec serve``'s impression log reads them. Put it last before
    ``present.items`` (which keeps its order), and do not cache it. Plackett-Luce's exact marginals take work
    that grows with positions squared times candidates: keep ``k`` and the candidate list short."""

    name = "rerank.explore"
    inline = True
    description = "Draw the top k stochastically (Plackett-Luce or epsilon-greedy), reporting each item's propensity."
    Config = ExploreConfig

    def __init__(self, config: ExploreConfig) -> None:
        super().__init__(config)
        self._rng = np.random.default_rng(config.seed)

    def rng(self, run_id: str | None) -> np.random.Generator:
        """The generator of one draw: from the seed and the run id when both are known, else the node's own."""
        seed = self.config.seed
        if seed is None or run_id is None:
            return self._rng
        return np.random.default_rng([seed, zlib.crc32(run_id.encode("utf-8"))])

    async def run(self, candidates: Candidates, k: int | None = None,
                  context: RunContext | None = None) -> Candidates:
        cands = as_candidates(candidates)
        assert cands is not None
        cfg = self.config
        items = cands.items
        order, marginals, cascade = explore_draw(
            [c.score for c in items], count_or(k, cfg.k), cfg.method,
            self.rng(context.run_id if context is not None else None),
            temperature=cfg.temperature, epsilon=cfg.epsilon)
        picked = [items[i] for i in order]
        record = context.record if context is not None else None
        if record is not None:
            record.extra = {**(record.extra or {}),
                            "propensities": {c.id: float(p) for c, p in zip(picked, marginals)},
                            "cascade": {c.id: float(p) for c, p in zip(picked, cascade)}}
        return cands.model_copy(update={"items": picked})


NODE_TYPES: tuple[type[NodeType], ...] = (MMR, Quota, Rules, Dedupe, Constraints, FilterSeen, Diversify, Explore)


@hookimpl
def llmrec_register_node_types(register: Callable[[type], None]) -> None:
    for cls in NODE_TYPES:
        register(cls)


__all__ = ["Constraints", "Dedupe", "Diversify", "Explore", "FilterSeen", "ITEM_FIELDS", "MMR", "NODE_TYPES", "Quota",
           "Rules", "explore_draw", "field_value", "normalise_title", "plackett_luce_marginals",
           "plackett_luce_weights", "position_probabilities"]
