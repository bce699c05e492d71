"""Task nodes built on ``llm.prompt``: each has a default template (prompts/*.j2) and a fixed output schema.

- ``llm.rewrite_query``: a query -> a rewritten query and keywords;
- ``llm.rank``: candidates -> the same candidates re-ordered (``mode``: listwise, pointwise or pairwise);
- ``llm.recommend``: liked/disliked titles or a profile -> exactly ``n`` catalog items;
- ``llm.explain``: items (+ profile) -> one short reason per item;
- ``llm.label``: a text -> one label of a fixed set (+ optional top labels with confidence);
- ``llm.judge``: a subject -> a 1-5 score per rubric criterion and a rationale;
- ``llm.plan``: constraints -> a structured plan (the config's schema or steps/items/notes).

Every option of ``llm.prompt`` applies (system, few_shot, temperature, token_budget/truncate, ...); a custom
``template`` may use the variables the node computes (listed per node) and any extra input it is given.
Catalog and user text reach the model only as template variables, and where the answer must name items the
request carries :class:`~llmrec.llm.provider.Choices` (a local provider cannot decode anything else, a remote one
is re-asked). The node then re-checks the parsed answer itself, whatever the provider did: an id that is not a
candidate or not in the catalog is never returned (defence in depth against prompt injection).
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import itertools
import json
import keyword
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from ..data.catalog import Catalog, Interactions, Item
from ..errors import OutputValidationError
from ..finetune.data import PairConfig, build_pairs, describe_item, feedback
from ..hookspecs import hookimpl
from ..llm.provider import Choices, Completion, CompletionRequest, ItemContext, Message, Provider
from ..node import CheckContext, Param, Problem, RunContext, Signature, read_signature
from ..runtime.trace import ModelUsage
from ..types import Candidates, Labeled, LabelScore, Recommendations, ScoredItem, UserProfile
from .llm import Prompt, PromptConfig, resolve_prompt

# -- output values ---------------------------------------------------------------------------------------------


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # built on first use (issue 13)


class RewrittenQuery(_Value):
    """What ``llm.rewrite_query`` returns."""

    query: str = Field(description="The rewritten query (the original one when the model gave an empty one).")
    keywords: list[str] = Field(default_factory=list, description="Search keywords, distinct, in order.")
    original: str = ""


class Explanation(_Value):
    id: str
    title: str = ""
    reason: str = ""


class Explanations(_Value):
    """One reason per item, in the order of the items given; ``recommendations`` with the reasons filled in when
    the items were Recommendations."""

    items: list[Explanation] = Field(default_factory=list)
    recommendations: Recommendations | None = None

    @property
    def reasons(self) -> dict[str, str]:
        return {e.id: e.reason for e in self.items}


class Graded(_Value):
    """What ``llm.relevance`` returns: a grade per item (0 = not relevant) and the ids at or above the bar."""

    grades: dict[str, int] = Field(default_factory=dict)
    relevant: list[str] = Field(default_factory=list, description="Ids graded at least the config's relevant_at.")


class Judgement(_Value):
    """What ``llm.judge`` returns: a 1-5 score per criterion, their mean and the judge's rationale."""

    scores: dict[str, int]
    overall: float
    rationale: str = ""
    passed: bool | None = Field(None, description="overall >= pass_mark, when the config sets one.")


class PlanItem(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: str
    item_id: str | None = Field(None, description="A catalog id, when the plan uses catalog items.")
    category: str = ""
    price: float | None = Field(None, ge=0)
    quantity: int = Field(1, ge=1)


class Plan(BaseModel):
    """The default schema of ``llm.plan``: ordered steps, the items needed (with prices) and notes."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    steps: list[str] = Field(default_factory=list)
    items: list[PlanItem] = Field(default_factory=list)
    notes: str = ""

    @property
    def total(self) -> float:
        return sum((i.price or 0.0) * i.quantity for i in self.items)


# -- answer schemas (what the model must produce) ----------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class QueryAnswer(_Answer):
    query: str
    keywords: list[str] = Field(default_factory=list, max_length=20)


class RankAnswer(_Answer):
    ranking: list[str] = Field(description="Candidate ids, best first.")


class ScoreAnswer(_Answer):
    score: float = Field(ge=0, le=10, description="How well the item fits, 0 (not at all) to 10 (perfectly).")


class PairAnswer(_Answer):
    winner: str = Field(description="The id of the better of the two items.")


class Reason(_Answer):
    id: str
    reason: str = Field(max_length=200)  # one short reason: also what a local model's token budget can hold


class ExplainAnswer(_Answer):
    reasons: list[Reason]


_DYNAMIC: dict[Any, type[BaseModel]] = {}


def _dynamic(key: Any, build: Any) -> type[BaseModel]:
    model = _DYNAMIC.get(key)
    if model is None:
        if len(_DYNAMIC) > 256:
            _DYNAMIC.clear()
        model = _DYNAMIC[key] = build()
    return model


def recommend_answer(n: int) -> type[BaseModel]:
    """``{"items": [...]}`` with exactly ``n`` entries (the length is part of the schema a provider enforces)."""
    return _dynamic(("recommend", n), lambda: create_model(
        "RecommendAnswer", __base__=_Answer, items=(list[str], Field(min_length=n, max_length=n))))


def label_answer(labels: tuple[str, ...], top: int) -> type[BaseModel]:
    def build() -> type[BaseModel]:
        lit = Literal[labels]  # type: ignore[valid-type]
        score = create_model("LabelConfidence", __base__=_Answer, label=(lit, ...),
                             confidence=(float, Field(ge=0.0, le=1.0)))
        fields: dict[str, Any] = {"label": (lit, ...)}
        if top:
            fields["top"] = (list[score], Field(default_factory=list, max_length=top))  # type: ignore[valid-type]
        return create_model("LabelAnswer", __base__=_Answer, **fields)

    return _dynamic(("label", labels, top), build)


def relevance_answer(max_grade: int) -> type[BaseModel]:
    def build() -> type[BaseModel]:
        grade = create_model("ItemGrade", __base__=_Answer, id=(str, ...),
                             grade=(int, Field(ge=0, le=max_grade)))
        return create_model("RelevanceAnswer", __base__=_Answer, grades=(list[grade], ...))  # type: ignore[valid-type]

    return _dynamic(("relevance", max_grade), build)


def judge_answer(criteria: tuple[str, ...]) -> type[BaseModel]:
    def build() -> type[BaseModel]:
        scores = create_model("RubricScores", __base__=_Answer,
                              **{c: (int, Field(ge=1, le=5)) for c in criteria})  # type: ignore[call-overload]
        return create_model("JudgeAnswer", __base__=_Answer, rationale=(str, ...), scores=(scores, ...))

    return _dynamic(("judge", criteria), build)


# -- helpers ---------------------------------------------------------------------------------------------------


def item_view(item: Item, chars: int = 300) -> dict[str, Any]:
    """What a template sees of an item: id, title, a description cut to ``chars`` at a word, category, price."""
    text = item.description
    if len(text) > chars:
        text = text[:chars].rsplit(" ", 1)[0] + " ..."
    return {"id": item.id, "title": item.title, "description": text, "category": item.category,
            "price": item.price}


def profile_view(profile: UserProfile | None, catalog: Catalog | None, recent: int = 20) -> dict[str, Any] | None:
    """What a template sees of a profile: known, top categories, titles of the most recent items seen."""
    if profile is None:
        return None
    seen = profile.seen[-recent:] if recent else []
    titles = [catalog[i].title for i in seen if catalog is not None and i in catalog] if catalog is not None else seen
    return {"user_id": profile.user_id, "known": profile.known, "top_categories": list(profile.top_categories),
            "recent": titles}


def feedback_lines(feedback: Any) -> list[str]:
    """Violations (from ``verify.*``), strings or a Verified value as plain lines for a template."""
    if feedback is None:
        return []
    if hasattr(feedback, "violations"):
        feedback = feedback.violations
    if isinstance(feedback, (str, BaseModel, dict)):
        feedback = [feedback]
    out = []
    for v in feedback:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            out.append(str(v.get("message") or v))
        else:
            out.append(str(getattr(v, "message", v)))
    return [line for line in out if line]


def as_text(value: Any) -> str | None:
    """A value as prompt text: strings as they are, anything else as indented JSON (None stays None)."""
    if value is None:
        return None
    data = as_data(value)
    return data if isinstance(data, str) else json.dumps(data, indent=1, default=str, ensure_ascii=False)


def as_data(value: Any) -> Any:
    """Plain JSON-able data of a value (pydantic models dumped), for templates."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [as_data(v) for v in value]
    if isinstance(value, dict):
        return {k: as_data(v) for k, v in value.items()}
    return value


def _ids_of(items: Any) -> list[str]:
    if isinstance(items, Candidates):
        return items.ids
    if isinstance(items, Recommendations):
        return [r.id for r in items.items]
    if isinstance(items, dict) and "items" in items:  # a fallback literal
        return _ids_of(Candidates.model_validate(items))
    return [str(i) for i in items or ()]


def _unique(values: Any) -> list[str]:
    return list(dict.fromkeys(values))


def _describe(item: Item) -> str:
    """``Title (year) [genres]``, as the book's fine-tuning prompts (and `llmrec finetune`) list items."""
    return describe_item(item)


@dataclasses.dataclass(frozen=True)
class Scored:
    """A task's parsed answer with the model's score of each value it chose (``Completion.scores``; empty when the
    provider has none, as text models do)."""

    answer: Any
    scores: dict[str, float]


def item_context(profile: UserProfile | None, path: str, ids: Any) -> ItemContext:
    """What a provider that models item ids needs (a rec-LM): the profile's (item, rating) history and the item
    behind each value of the Choices at ``path``."""
    history = tuple(profile.events()) if profile is not None else ()
    return ItemContext(history=history, path=path, ids=tuple(ids))


# -- the common base ---------------------------------------------------------------------------------------------


class TaskConfig(PromptConfig):
    """llm.prompt's config, with the node's default template when neither 'template' nor 'template_file' is set."""

    default_template: ClassVar[str] = ""
    description_chars: int = Field(300, ge=0, description="Item descriptions are cut to this many characters.")

    @model_validator(mode="before")
    @classmethod
    def _default_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("template") is None and data.get("template_file") is None:
            data = {**data, "template_file": cls.template_for(data)}
        return data

    @classmethod
    def template_for(cls, data: dict[str, Any]) -> str:
        return cls.default_template


class _Task(Prompt):
    """A task node: typed inputs (its ``run`` signature), computed template variables, a fixed answer schema."""

    Config = TaskConfig
    #: template variables the node computes from its inputs (a custom template may use them)
    provides: ClassVar[frozenset[str]] = frozenset()
    #: whether the config's 'schema' replaces the answer schema (llm.plan); otherwise it is refused
    custom_schema: ClassVar[bool] = False

    @classmethod
    def signature(cls, config: TaskConfig) -> Signature:  # type: ignore[override]
        r = resolve_prompt(config)
        base = read_signature(cls.run)
        params = dict(base.params)
        for name in sorted(r.names - cls.provides - set(params)):  # extra template variables are extra inputs
            params[name] = Param(name, Any, True)
        return Signature(params=params, output=cls.output_type(config, base.output), variadic=False,
                         wants_context=True)

    @classmethod
    def output_type(cls, config: TaskConfig, declared: Any) -> Any:
        return declared

    @classmethod
    def check(cls, config: TaskConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        problems = list(super().check(config, ctx))
        if config.schema_ and not cls.custom_schema:
            problems.append(Problem(f"{cls.name} has a fixed output schema", "schema",
                                    "Drop 'schema', or use llm.prompt for a free-form answer."))
        r = resolve_prompt(config)
        shadowed = sorted((r.names & set(read_signature(cls.run).params)) - cls.provides - {"model"})
        for name in shadowed:  # an input the node turns into a computed variable of another shape
            problems.append(Problem(f"the template uses '{name}', an input {cls.name} does not pass to templates "
                                    "as is", "template" if config.template is not None else "template_file",
                                    f"Template variables of {cls.name}: {', '.join(sorted(cls.provides))}."))
        return problems

    # -- asking ---------------------------------------------------------------------------------------------
    def answer_schema(self, variables: dict[str, Any]) -> type[BaseModel] | None:
        """The schema the model must answer in for these variables."""
        raise NotImplementedError

    #: whether :meth:`ask` returns :class:`Scored` (the answer and the model's scores) instead of the answer
    scored: ClassVar[bool] = False

    def messages(self, inputs: dict[str, Any], provider: Any) -> Any:
        # ``_name`` variables are for the request (allowed values, item context), never for the template
        return super().messages({k: v for k, v in inputs.items() if not k.startswith("_")}, provider)

    def request(self, inputs: dict[str, Any], provider: Any, context: RunContext | None) -> tuple[CompletionRequest,
                                                                                                   dict[str, Any]]:
        req, info = super().request(inputs, provider, context)
        schema = self.answer_schema(inputs)
        if schema is not None:
            req = dataclasses.replace(req, schema=schema)
        if inputs.get("_items") is not None:
            req = dataclasses.replace(req, items=inputs["_items"])
        return req, info

    def result(self, completion: Completion, context: RunContext | None) -> Any:
        if self.custom_schema and self.config.schema_:
            return super().result(completion, context)
        if completion.parsed is None:
            raise OutputValidationError("the provider returned no parsed output for the schema",
                                        context.node_id if context else None, completion.attempts, completion.text)
        if self.scored:
            return Scored(completion.parsed, dict(completion.scores))
        return completion.parsed

    async def ask(self, model: Provider, context: RunContext | None, variables: dict[str, Any]) -> Any:
        """One model call through llm.prompt (rendering, budget, choices, usage in the trace)."""
        return await Prompt.run(self, model=model, context=context, **variables)

    async def ask_many(self, model: Provider, context: RunContext | None, calls: list[dict[str, Any]],
                       concurrency: int) -> list[Any]:
        """Several calls, ``concurrency`` at a time; tokens, cost and attempts summed into the trace record."""
        gate = asyncio.Semaphore(concurrency)
        totals = {"prompt": 0, "completion": 0, "cost": 0.0, "attempts": 0}

        async def one(variables: dict[str, Any]) -> Any:
            async with gate:
                out = await self.ask(model, context, variables)
                info = context.extra.get("llm", {}) if context is not None else {}  # no await since the call
                tokens = info.get("tokens") or {}
                totals["prompt"] += tokens.get("prompt", 0)
                totals["completion"] += tokens.get("completion", 0)
                totals["cost"] += info.get("cost") or 0.0
                totals["attempts"] += info.get("attempts") or 1
                return out

        results = await asyncio.gather(*(one(v) for v in calls))
        if context is not None and calls:
            data = dict(context.extra.get("llm", {}))
            data.update(tokens={"prompt": totals["prompt"], "completion": totals["completion"]},
                        cost=totals["cost"], attempts=totals["attempts"], calls=len(calls))
            context.extra["llm"] = data
            record = context.record
            if record is not None and hasattr(record, "usage"):
                record.usage = ModelUsage(model=data.get("model") or None, calls=totals["attempts"],
                                          prompt_tokens=totals["prompt"], completion_tokens=totals["completion"],
                                          cost=totals["cost"])
        return list(results)


# -- llm.rewrite_query -----------------------------------------------------------------------------------------


class RewriteConfig(TaskConfig):
    default_template: ClassVar[str] = "rewrite_query.j2"
    max_keywords: int = Field(8, ge=0, le=20, description="Keywords kept at most.")


class RewriteQuery(_Task):
    """Rewrite a search query for retrieval (spelling, synonyms, intent) and extract keywords.

    Template variables: ``query``, ``profile`` (or None), ``max_keywords``."""

    name = "llm.rewrite_query"
    description = "Rewrite a search query with an LLM: a clearer query and keywords."
    Config = RewriteConfig
    provides = frozenset({"query", "profile", "max_keywords"})

    def answer_schema(self, variables: dict[str, Any]) -> type[BaseModel]:
        return QueryAnswer

    async def run(self, model: Provider, query: str, profile: UserProfile | None = None,
                  context: RunContext | None = None, **extra: Any) -> RewrittenQuery:
        if not query.strip():
            return RewrittenQuery(query=query, keywords=[], original=query)
        variables = {**extra, "query": query, "profile": profile_view(profile, None),
                     "max_keywords": self.config.max_keywords}
        answer = await self.ask(model, context, variables)
        keywords = _unique(k.strip() for k in answer.keywords if k.strip())[: self.config.max_keywords]
        return RewrittenQuery(query=answer.query.strip() or query, keywords=keywords, original=query)


# -- llm.rank --------------------------------------------------------------------------------------------------


class RankConfig(TaskConfig):
    mode: Literal["listwise", "pointwise", "pairwise"] = Field(
        "listwise", description="listwise: one ordering; pointwise: a 0-10 score per item; pairwise: compare pairs.")
    k: int | None = Field(None, ge=1, description="Re-order only the top k candidates (default: all; pairwise: 8); "
                                                  "the rest follow in their input order.")
    concurrency: int = Field(8, ge=1, description="Model calls at a time (pointwise, pairwise).")
    source_name: str = Field("llm", min_length=1, description="Name of the model's score in ScoredItem.sources.")

    @classmethod
    def template_for(cls, data: dict[str, Any]) -> str:
        return f"rank_{data.get('mode', 'listwise')}.j2"


class Rank(_Task):
    """Re-order candidates with an LLM. The answer may only name candidates (Choices over their ids, each once);
    the node drops anything else itself and appends candidates the model left out, in their input order.

    Template variables: ``candidates`` (listwise: id, title, description, category, price each), ``item``
    (pointwise), ``a`` and ``b`` (pairwise), ``profile`` (or None), ``query``."""

    name = "llm.rank"
    description = "Re-rank candidates with an LLM: listwise, pointwise or pairwise; only candidates come back."
    Config = RankConfig
    provides = frozenset({"candidates", "item", "a", "b", "profile", "query"})
    scored = True

    def answer_schema(self, variables: dict[str, Any]) -> type[BaseModel]:
        return {"listwise": RankAnswer, "pointwise": ScoreAnswer, "pairwise": PairAnswer}[self.config.mode]

    def choices(self, inputs: dict[str, Any]) -> tuple[Choices, ...]:
        mode = self.config.mode
        if mode == "listwise":
            return (Choices("ranking[]", tuple(c["id"] for c in inputs["candidates"]), unique=True),)
        if mode == "pairwise":
            return (Choices("winner", (inputs["a"]["id"], inputs["b"]["id"])),)
        return ()

    async def run(self, model: Provider, candidates: Candidates, catalog: Catalog,
                  profile: UserProfile | None = None, query: str | None = None,
                  context: RunContext | None = None, **extra: Any) -> Candidates:
        cfg = self.config
        cands = candidates if isinstance(candidates, Candidates) else Candidates.model_validate(candidates)
        k = cfg.k or (8 if cfg.mode == "pairwise" else None)
        head = [c for c in cands.items if c.id in catalog]  # an id the catalog lacks cannot be shown: kept after
        head = head[:k] if k else head
        if len(head) < 2:
            return cands
        shown = {c.id for c in head}
        views = [item_view(catalog[c.id], cfg.description_chars) for c in head]
        common = {**extra, "profile": profile_view(profile, catalog), "query": query or ""}
        llm_scores: dict[str, float] = {}
        if cfg.mode == "listwise":
            ids = [v["id"] for v in views]
            out = await self.ask(model, context, {**common, "candidates": views,
                                                  "_items": item_context(profile, "ranking[]", ids)})
            answer = out.answer
            order = [i for i in _unique(answer.ranking) if i in shown]  # defence in depth: candidates only
            n = len(order)
            # the model's own scores when it has them (a rec-LM's log-probabilities), else rank-based
            llm_scores = ({i: out.scores[i] for i in order if i in out.scores} if out.scores
                          else {i: float(n - pos) / n for pos, i in enumerate(order)})
        elif cfg.mode == "pointwise":
            answers = await self.ask_many(model, context, [{**common, "item": v} for v in views], cfg.concurrency)
            llm_scores = {v["id"]: float(a.answer.score) for v, a in zip(views, answers)}
            order = sorted(llm_scores, key=lambda i: -llm_scores[i])  # stable: ties keep the input order
        else:
            pairs = list(itertools.combinations(views, 2))
            answers = await self.ask_many(
                model, context, [{**common, "a": a, "b": b,
                                  "_items": item_context(profile, "winner", (a["id"], b["id"]))} for a, b in pairs],
                cfg.concurrency)
            wins = {v["id"]: 0.0 for v in views}
            for (a, b), out in zip(pairs, answers):
                answer = out.answer
                if answer.winner in (a["id"], b["id"]):  # anything else counts for neither
                    wins[answer.winner] += 1.0
            llm_scores = wins
            order = sorted(wins, key=lambda i: -wins[i])
        if context is not None:
            context.extra["ranked"] = {"mode": cfg.mode, "by_model": len(order), "appended": len(cands.items) - len(order)}
        by_id = {c.id: c for c in cands.items}
        final = _unique(order + [c.id for c in cands.items])
        n = len(final)
        items = []
        for pos, i in enumerate(final):
            c = by_id[i]
            sources = dict(c.sources)
            if i in llm_scores:
                sources[cfg.source_name] = llm_scores[i]
            items.append(ScoredItem(id=i, score=float(n - pos) / n, sources=sources))
        return Candidates(items=items, source=cfg.source_name)


# -- llm.recommend ---------------------------------------------------------------------------------------------


class RecommendConfig(TaskConfig):
    default_template: ClassVar[str] = "recommend.j2"
    n: int = Field(10, ge=1, le=200, description="How many items, unless the 'n' input says otherwise.")
    by: Literal["title", "id"] = Field("title", description="What the model answers with: catalog titles or ids.")
    exclude_seen: bool = Field(True, description="Never recommend items of the profile's history.")
    list_options: int = Field(
        100, ge=0, description="List the options in the prompt when there are at most this many (candidates, "
                               "or the catalog); larger sets are enforced by Choices only.")
    source_name: str = Field("llm", min_length=1, description="The list's source name in its Candidates.")
    score: Literal["rank", "model"] = Field(
        "rank", description="Each item's score: 'rank' ((n - position) / n), or 'model': the model's own score "
                            "when the provider gives one (a rec-LM's log-probability), for blending by score.")
    profile_items: int = Field(
        20, ge=0, description="Without liked/disliked inputs, the titles of the profile's last this many liked and "
                              "disliked items are used.")
    examples: int = Field(
        0, ge=0, le=20, description="Few-shot: this many in-context examples drawn from other users of the "
                                    "'interactions' input (their liked/disliked items before a cut, and the next "
                                    "items they liked after it as the answer), rendered with the node's template.")
    example_seed: int = Field(0, description="Seed of which users (and cuts) the examples are drawn from.")


class Recommend(_Task):
    """Recommend exactly ``n`` items of the catalog (or of the candidates, when given) from liked and disliked
    titles or a profile. The answer is constrained to the allowed titles or ids and mapped back to ids; the node
    re-checks it and fills any shortfall from the options in order (recorded in the trace's extra).

    Template variables: ``liked``, ``disliked``, ``profile``, ``n``, ``by``, ``options`` (empty when too many to
    list), ``feedback`` (lines: what a verification found wrong with an earlier answer)."""

    name = "llm.recommend"
    description = "Recommend exactly n catalog items with an LLM (constrained to the catalog, mapped to ids)."
    Config = RecommendConfig
    provides = frozenset({"liked", "disliked", "liked_items", "disliked_items", "profile", "n", "by", "options",
                          "feedback"})
    scored = True

    @classmethod
    def check(cls, config: RecommendConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        problems = list(super().check(config, ctx))
        if config.examples and "interactions" not in ctx.declared_inputs:
            problems.append(Problem("'examples' draws few-shot examples from other users, but the node has no "
                                    "'interactions' input", "examples",
                                    "Add inputs: {interactions: ${resources.NAME.train}}, or set examples: 0."))
        return problems

    def messages(self, inputs: dict[str, Any], provider: Any) -> Any:
        messages, info = super().messages(inputs, provider)
        shots = inputs.get("_examples") or ()
        if not shots:
            return messages, info

        extra = []
        for variables, answer in shots:
            user, _ = super().messages({**inputs, **variables}, provider)
            extra += [Message("user", user[-1].content), Message("assistant", answer)]
        return (*messages[:-1], *extra, messages[-1]), info

    def _examples(self, interactions: Any, catalog: Catalog, user_id: str | None) -> list[tuple[dict[str, Any], str]]:
        """``examples`` (template variables, answer JSON) from other users, the same for every request of a user."""
        import random

        cfg = self.config
        cache = self.__dict__.setdefault("_pairs", {})
        key = id(interactions)
        if key not in cache:
            cache.clear()
            config = PairConfig(n=cfg.n, max_history=cfg.profile_items or 20, seed=cfg.example_seed)
            ratings = {}
            for it in interactions:
                ratings[(it.user_id, it.item_id)] = feedback(it, config)
            cache[key] = (interactions, build_pairs(interactions, catalog, config), ratings)
        _, pairs, marks = cache[key]
        others = [p for p in pairs if p.user_id != user_id]
        rng = random.Random(f"{cfg.example_seed}:{user_id}")
        out = []
        for pair in rng.sample(others, min(cfg.examples, len(others))):
            liked = [i for i in pair.history if marks.get((pair.user_id, i)) == "liked" and i in catalog]
            disliked = [i for i in pair.history if marks.get((pair.user_id, i)) == "disliked" and i in catalog]
            titles = [catalog[i].title for i in pair.targets]
            key_of = (lambda i: catalog[i].title) if cfg.by == "title" else (lambda i: i)
            variables = {"liked": [catalog[i].title for i in liked], "disliked": [catalog[i].title for i in disliked],
                         "liked_items": [_describe(catalog[i]) for i in liked],
                         "disliked_items": [_describe(catalog[i]) for i in disliked],
                         "profile": None, "n": len(titles), "by": cfg.by, "options": [], "feedback": []}
            out.append((variables, json.dumps({"items": [key_of(i) for i in pair.targets]}, ensure_ascii=False)))
        return out

    def answer_schema(self, variables: dict[str, Any]) -> type[BaseModel]:
        return recommend_answer(variables["n"])

    def choices(self, inputs: dict[str, Any]) -> tuple[Choices, ...]:
        return (Choices("items[]", inputs["_allowed"], unique=True),)

    async def run(self, model: Provider, catalog: Catalog, liked: list[str] | None = None,
                  disliked: list[str] | None = None, profile: UserProfile | None = None, n: int | None = None,
                  candidates: Candidates | None = None, exclude: list[str] | None = None, feedback: Any = None,
                  interactions: Interactions | None = None, context: RunContext | None = None,
                  **extra: Any) -> Candidates:
        cfg = self.config
        n = cfg.n if n is None else max(int(n), 0)
        banned = set(exclude or ())
        if cfg.exclude_seen and profile is not None:
            banned |= set(profile.seen)
        pool = _ids_of(candidates) if candidates is not None else catalog.ids
        pool = [i for i in _unique(pool) if i in catalog and i not in banned]
        key = (lambda i: catalog[i].title) if cfg.by == "title" else (lambda i: i)
        to_id: dict[str, str] = {}
        for i in pool:
            to_id.setdefault(key(i), i)  # a title shared by several items names the first
        allowed = tuple(to_id)
        n = min(n, len(allowed))
        if n == 0:
            return Candidates(items=[], source=cfg.source_name)
        options = [item_view(catalog[to_id[v]], cfg.description_chars) for v in allowed] \
            if len(allowed) <= cfg.list_options else []
        liked_ids = [i for i in profile.liked[-cfg.profile_items:] if i in catalog] if profile is not None else []
        disliked_ids = ([i for i in profile.disliked[-cfg.profile_items:] if i in catalog]
                        if profile is not None else [])
        if liked is None and profile is not None:  # titles of the profile's rated items, most recent kept
            liked = [catalog[i].title for i in liked_ids]
        if disliked is None and profile is not None:
            disliked = [catalog[i].title for i in disliked_ids]
        examples = (self._examples(interactions, catalog, profile.user_id if profile is not None else None)
                    if cfg.examples and interactions is not None else [])
        described = bool(self._r.names & {"liked_items", "disliked_items"})  # only a template that shows them
        variables = {**extra, "liked": list(liked or []), "disliked": list(disliked or []),
                     "liked_items": [_describe(catalog[i]) for i in liked_ids] if described else [],
                     "disliked_items": [_describe(catalog[i]) for i in disliked_ids] if described else [],
                     "_examples": examples,
                     "profile": profile_view(profile, catalog), "n": n, "by": cfg.by, "options": options,
                     "feedback": feedback_lines(feedback), "_allowed": allowed,
                     "_items": item_context(profile, "items[]", (to_id[v] for v in allowed))}
        out = await self.ask(model, context, variables)
        chosen = _unique(to_id[v] for v in out.answer.items if v in to_id)[:n]  # defence in depth: allowed only
        filled = [to_id[v] for v in allowed if to_id[v] not in set(chosen)][: n - len(chosen)]
        if context is not None:
            context.extra["recommended"] = {"by_model": len(chosen), "filled": len(filled)}
        by_value = {to_id[v]: score for v, score in out.scores.items() if v in to_id}
        items = []
        for pos, i in enumerate(chosen + filled):
            rank_score = float(n - pos) / n
            sources = {cfg.source_name: rank_score}
            if i in by_value:  # the model's own score (a rec-LM's log-probability), beside the rank score
                sources[f"{cfg.source_name}_logprob"] = by_value[i]
            score = by_value[i] if cfg.score == "model" and i in by_value else rank_score
            items.append(ScoredItem(id=i, score=score, sources=sources))
        return Candidates(items=items, source=cfg.source_name)


# -- llm.explain -----------------------------------------------------------------------------------------------


class ExplainConfig(TaskConfig):
    default_template: ClassVar[str] = "explain.j2"
    max_words: int = Field(20, ge=3, le=80, description="About how long each reason may be (said in the prompt).")
    missing_reason: str = Field("", description="The reason of an item the model left out.")


class Explain(_Task):
    """One short reason per item, for the user in the profile (or the query). Reasons may only be given for the
    items shown; each item gets exactly one, in the order given.

    Template variables: ``items`` (id, title, description, category, price), ``profile``, ``query``,
    ``max_words``."""

    name = "llm.explain"
    description = "Explain recommendations with an LLM: one short reason per item."
    Config = ExplainConfig
    provides = frozenset({"items", "profile", "query", "max_words"})

    def answer_schema(self, variables: dict[str, Any]) -> type[BaseModel]:
        return ExplainAnswer

    def choices(self, inputs: dict[str, Any]) -> tuple[Choices, ...]:
        return (Choices("reasons[].id", tuple(v["id"] for v in inputs["items"]), unique=True),)

    async def run(self, model: Provider, items: Candidates | Recommendations | list[str], catalog: Catalog,
                  profile: UserProfile | None = None, query: str | None = None,
                  context: RunContext | None = None, **extra: Any) -> Explanations:
        cfg = self.config
        ids = [i for i in _unique(_ids_of(items)) if i in catalog]
        reasons: dict[str, str] = {}
        if ids:
            views = [item_view(catalog[i], cfg.description_chars) for i in ids]
            variables = {**extra, "items": views, "profile": profile_view(profile, catalog), "query": query or "",
                         "max_words": cfg.max_words}
            answer = await self.ask(model, context, variables)
            for r in answer.reasons:
                if r.id in catalog and r.id in set(ids):  # defence in depth: reasons for the items given only
                    reasons.setdefault(r.id, " ".join(r.reason.split()))
        out = [Explanation(id=i, title=catalog[i].title, reason=reasons.get(i, cfg.missing_reason)) for i in ids]
        recs = None
        if isinstance(items, Recommendations):
            recs = items.model_copy(update={"items": [
                r.model_copy(update={"reason": reasons.get(r.id, r.reason)}) for r in items.items]})
        return Explanations(items=out, recommendations=recs)


# -- llm.label -------------------------------------------------------------------------------------------------


class LabelConfig(TaskConfig):
    default_template: ClassVar[str] = "label.j2"
    labels: list[str] = Field(min_length=2, description="The fixed label set.")
    top: int = Field(0, ge=0, description="Also ask for the top labels with a confidence each (0: no).")

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        labels = [label.strip() for label in labels]
        if any(not label for label in labels):
            raise ValueError("labels must not be empty")
        dups = sorted({label for label in labels if labels.count(label) > 1})
        if dups:
            raise ValueError(f"labels repeat {', '.join(dups)}")
        return labels

    @model_validator(mode="after")
    def _top_fits(self) -> LabelConfig:
        if self.top > len(self.labels):
            raise ValueError(f"top {self.top} is more than the {len(self.labels)} labels")
        return self


class Label(_Task):
    """Classify a text into one label of a fixed set (an enum in the schema), optionally with the top labels and
    a confidence each.

    Template variables: ``text``, ``labels``, ``top``."""

    name = "llm.label"
    description = "Label a text with an LLM: one label of a fixed set, plus optional top labels with confidence."
    Config = LabelConfig
    provides = frozenset({"text", "labels", "top"})

    def answer_schema(self, variables: dict[str, Any]) -> type[BaseModel]:
        return label_answer(tuple(self.config.labels), self.config.top)

    def choices(self, inputs: dict[str, Any]) -> tuple[Choices, ...]:
        labels = tuple(self.config.labels)
        out = (Choices("label", labels),)
        return out + ((Choices("top[].label", labels, unique=True),) if self.config.top else ())

    async def run(self, model: Provider, text: str, context: RunContext | None = None, **extra: Any) -> Labeled:
        cfg = self.config
        variables = {**extra, "text": text, "labels": list(cfg.labels), "top": cfg.top}
        answer = await self.ask(model, context, variables)
        by_fold = {label.casefold(): label for label in cfg.labels}
        label = by_fold.get(str(answer.label).strip().casefold())
        if label is None:  # defence in depth: a provider that ignored the enum
            raise OutputValidationError(f"the model answered label {str(answer.label)!r}, not one of "
                                        f"{', '.join(cfg.labels)}", context.node_id if context else None)
        top: dict[str, float] = {}
        for s in getattr(answer, "top", None) or ():
            name = by_fold.get(str(s.label).strip().casefold())
            if name is not None and name not in top:
                top[name] = min(max(float(s.confidence), 0.0), 1.0)
        ranked = sorted(top.items(), key=lambda kv: -kv[1])[: cfg.top]
        return Labeled(label=label, top=[LabelScore(label=k, confidence=v) for k, v in ranked])


# -- llm.relevance ---------------------------------------------------------------------------------------------


class RelevanceConfig(TaskConfig):
    default_template: ClassVar[str] = "relevance.j2"
    max_grade: int = Field(3, ge=1, le=10, description="Grades run from 0 to this.")
    relevant_at: int = Field(2, ge=1, description="Items graded at least this are 'relevant'.")
    k: int | None = Field(None, ge=1, description="Grade only the first k candidates (the rest get 0).")

    @model_validator(mode="after")
    def _bar(self) -> RelevanceConfig:
        if self.relevant_at > self.max_grade:
            raise ValueError(f"relevant_at {self.relevant_at} is above max_grade {self.max_grade}")
        return self


class Relevance(_Task):
    """Relevance labels from an LLM (the book's labeling prompt): one call grades every candidate 0..max_grade for
    the user in the profile (or the query). Its output can label training data (``labels:`` of a trainable
    node such as rank.lambdamart) or evaluation. An item the model leaves out is graded 0.

    Template variables: ``items``, ``profile``, ``query``, ``max_grade``."""

    name = "llm.relevance"
    description = "Grade candidates' relevance for a user with an LLM (labels for training or evaluation)."
    Config = RelevanceConfig
    provides = frozenset({"items", "profile", "query", "max_grade"})

    def answer_schema(self, variables: dict[str, Any]) -> type[BaseModel]:
        return relevance_answer(self.config.max_grade)

    def choices(self, inputs: dict[str, Any]) -> tuple[Choices, ...]:
        return (Choices("grades[].id", tuple(v["id"] for v in inputs["items"]), unique=True),)

    async def run(self, model: Provider, candidates: Candidates | Recommendations | list[str], catalog: Catalog,
                  profile: UserProfile | None = None, query: str | None = None,
                  context: RunContext | None = None, **extra: Any) -> Graded:
        cfg = self.config
        ids = [i for i in _unique(_ids_of(candidates)) if i in catalog]
        ids = ids[: cfg.k] if cfg.k is not None else ids
        if not ids:
            return Graded()
        views = [item_view(catalog[i], cfg.description_chars) for i in ids]
        variables = {**extra, "items": views, "profile": profile_view(profile, catalog), "query": query or "",
                     "max_grade": cfg.max_grade}
        answer = await self.ask(model, context, variables)
        grades = {i: 0 for i in ids}
        for g in answer.grades:
            if g.id in grades:  # defence in depth: grades for the items shown only
                grades[g.id] = min(max(int(g.grade), 0), cfg.max_grade)
        return Graded(grades=grades, relevant=[i for i in ids if grades[i] >= cfg.relevant_at])


# -- llm.judge -------------------------------------------------------------------------------------------------


class JudgeConfig(TaskConfig):
    default_template: ClassVar[str] = "judge.j2"
    criteria: dict[str, str] = Field(min_length=1, description="Criterion name -> what a 5 means; scored 1-5.")
    pass_mark: float | None = Field(None, ge=1, le=5, description="'passed' is overall >= this.")

    @field_validator("criteria")
    @classmethod
    def _names(cls, criteria: dict[str, str]) -> dict[str, str]:
        bad = [c for c in criteria if not c.isidentifier() or keyword.iskeyword(c) or c.startswith("_")]
        if bad:
            raise ValueError(f"criterion names must be plain identifiers (letters, digits, '_'): {', '.join(bad)}")
        return criteria


class Judge(_Task):
    """LLM-as-judge: score a subject (a plan, recommendations, any value) 1-5 on each rubric criterion, with a
    rationale. Usable inside a pipeline (e.g. to gate or log) and by evaluation.

    Template variables: ``subject`` (plain data; text as is), ``request`` (what was asked, or None),
    ``criteria`` (name -> description)."""

    name = "llm.judge"
    description = "Score a value 1-5 per rubric criterion with an LLM judge, with a rationale."
    Config = JudgeConfig
    provides = frozenset({"subject", "request", "criteria"})

    def answer_schema(self, variables: dict[str, Any]) -> type[BaseModel]:
        return judge_answer(tuple(self.config.criteria))

    async def run(self, model: Provider, subject: Any, request: Any = None, context: RunContext | None = None,
                  **extra: Any) -> Judgement:
        cfg = self.config
        variables = {**extra, "subject": as_text(subject), "request": as_text(request),
                     "criteria": dict(cfg.criteria)}
        answer = await self.ask(model, context, variables)
        scores = {c: int(getattr(answer.scores, c)) for c in cfg.criteria}
        overall = round(sum(scores.values()) / len(scores), 4)
        passed = None if cfg.pass_mark is None else overall >= cfg.pass_mark
        return Judgement(scores=scores, overall=overall, rationale=answer.rationale.strip(), passed=passed)


# -- llm.plan --------------------------------------------------------------------------------------------------


class PlanConfig(TaskConfig):
    default_template: ClassVar[str] = "plan.j2"


class PlanNode(_Task):
    """A structured plan from constraints: the config's ``schema``, or :class:`Plan` (steps, items, notes).

    With the default schema and a ``catalog`` input, item ids are constrained to the catalog; the node then
    re-checks them (an unknown id is repaired by its name's closest catalog title, else cleared) and takes each
    catalog item's price from the catalog, not from the model. ``feedback`` (violations of an earlier plan) and
    ``previous`` (that plan) let a spec re-ask once with what was wrong.

    Template variables: ``constraints``, ``feedback`` (lines), ``previous`` (plain data or None), ``options``
    (catalog items, when a catalog is given and has at most 100 items)."""

    name = "llm.plan"
    description = "Make a structured plan from constraints with an LLM (a schema of yours, or steps/items/notes)."
    Config = PlanConfig
    provides = frozenset({"constraints", "feedback", "previous", "options"})
    custom_schema = True

    @classmethod
    def output_type(cls, config: TaskConfig, declared: Any) -> Any:
        return resolve_prompt(config).output if config.schema_ else Plan

    def answer_schema(self, variables: dict[str, Any]) -> type[BaseModel] | None:
        return None if self.config.schema_ else Plan

    def choices(self, inputs: dict[str, Any]) -> tuple[Choices, ...]:
        ids = inputs.get("_catalog_ids")
        return (Choices("items[].item_id", ids, unique=False),) if ids and not self.config.schema_ else ()

    def messages(self, inputs: dict[str, Any], provider: Any) -> Any:
        return super().messages({k: v for k, v in inputs.items() if k != "_catalog_ids"}, provider)

    async def run(self, model: Provider, constraints: Any, feedback: Any = None, previous: Any = None,
                  catalog: Catalog | None = None, context: RunContext | None = None, **extra: Any) -> Any:
        cfg = self.config
        options = [item_view(i, cfg.description_chars) for i in catalog] if catalog is not None and len(catalog) <= 100 else []
        variables = {**extra, "constraints": as_text(constraints), "feedback": feedback_lines(feedback),
                     "previous": as_text(previous), "options": options,
                     "_catalog_ids": tuple(catalog.ids) if catalog is not None else ()}
        answer = await self.ask(model, context, variables)
        if cfg.schema_ or catalog is None:
            return answer
        return ground_plan(answer, catalog)


def ground_plan(plan: Plan, catalog: Catalog) -> Plan:
    """``plan`` with every item id checked against the catalog: unknown ids repaired by name (closest title) or
    cleared; catalog items take the catalog's title category and price."""
    titles = {i.title.casefold(): i.id for i in catalog}
    items = []
    for it in plan.items:
        item_id = it.item_id if it.item_id in catalog else None
        if item_id is None and (it.item_id or it.name):
            close = difflib.get_close_matches(it.name.casefold(), list(titles), n=1, cutoff=0.85)
            item_id = titles[close[0]] if close else None
        if item_id is not None:
            c = catalog[item_id]
            it = it.model_copy(update={"item_id": item_id, "name": c.title, "category": c.category or it.category,
                                       "price": c.price if c.price is not None else it.price})
        elif it.item_id is not None:
            it = it.model_copy(update={"item_id": None})
        items.append(it)
    return plan.model_copy(update={"items": items})


NODE_TYPES = (RewriteQuery, Rank, Recommend, Explain, Label, Relevance, Judge, PlanNode)


@hookimpl
def llmrec_register_node_types(register: Any) -> None:
    for cls in NODE_TYPES:
        register(cls)


__all__ = ["Explain", "Explanation", "Explanations", "Graded", "Relevance", "Judge", "Judgement", "Label", "LabelScore", "Labeled",
           "NODE_TYPES", "Plan", "PlanItem", "PlanNode", "Rank", "Recommend", "RewriteQuery", "RewrittenQuery",
           "ground_plan", "item_view"]
