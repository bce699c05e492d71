"""Dialogue node types (issue 15): understand a message, keep the dialogue state, ask what is worth asking.

- ``llm.extract``: a user message (and the earlier turns) -> an :class:`Extraction`: intent, features, price range,
  brand, type, use case and negations. With a model: the book's history-processor prompt (prompts/
  history_processor.j2, when there are earlier turns) and query-intent prompt (prompts/query_intent.j2), answered
  in the :class:`ExtractAnswer` schema. Without one (or when the model fails) it degrades: zero-shot intent
  classification with the embedder (each intent described as text, as ``label.embedding``), regular expressions for
  prices ("under $50", "between 100 and 200", "€80") and the slots' known values (the catalog's vocabulary) for the
  rest; the output says ``degraded: true`` and why, and the trace records it as a fallback, so CLI, API, HTTP and
  eval reports say the answer is degraded.
- ``dst.merge``: the state so far plus this turn's extraction -> the next :class:`DialogueState`, by explicit
  per-slot rules (``overwrite``, ``accumulate`` for lists, negations honoured per slot, confidence decaying per turn
  for slots not mentioned again); every value an update replaced or dropped is a :class:`SlotConflict`, and so are
  contradictory constraints (no catalog item can satisfy them together, e.g. "under $50, premium noise cancelling").
- ``clarify``: the question to ask: about the conflict of this turn if there is one, else about the policy's slot,
  else about the slot of highest expected information gain over the candidates (the entropy of the slot's values
  among the items that match the known slots). Worded by the LLM (prompts/clarify.j2) when a model is configured,
  by the slot's template otherwise (degraded, as above).
- ``dst.candidates``: the catalog items that fit the state (hard constraints, then how many soft ones), as
  Candidates; ``dialogue.answer``: the turn's reply (a message, the items shown, the action).

Slots are data (:class:`SlotDef`): kind, the item attribute that holds them, their values (default: the catalog's),
synonyms, update rule, decay and question. :data:`HEADPHONE_SLOTS` are the defaults, for the headphones shop of
:mod:`llmrec.conversation.catalog` (type, use_case, features, budget, brand).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..conversation.catalog import FEATURES, TYPES, USE_CASES
from ..conversation.types import Decision, DialogueState, SlotConflict
from ..data.catalog import Catalog, Item
from ..embed import Embedder
from ..errors import LlmrecError
from ..hookspecs import hookimpl
from ..llm.provider import Completion, CompletionRequest, Provider
from ..node import NodeType, Param, Problem, RunContext, Signature, read_signature
from ..types import Candidates, Recommendation, ScoredItem
from .common import PerObjects, count_or
from .llm import Prompt, PromptConfig, Unconfigured, resolve_prompt
from .llm_tasks import TaskConfig

# -- slots -------------------------------------------------------------------------------------------------------


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlotDef(BaseModel):
    """One slot of a domain, as data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["categorical", "multi", "numeric"] = "categorical"
    attribute: str | None = Field(None, description="The item attribute holding it (default: the slot's name; "
                                                    "'price' for a numeric slot, 'category' for the category).")
    flags: bool = Field(False, description="A multi slot whose values are boolean attributes (features).")
    values: list[str] = Field(default_factory=list, description="Its values (default: the catalog's).")
    synonyms: dict[str, list[str]] = Field(default_factory=dict, description="Value -> other ways to say it.")
    rule: Literal["overwrite", "accumulate"] | None = Field(
        None, description="How a new value updates it: overwrite (default; categorical, numeric) or accumulate "
                          "(default for multi slots: the union of the values).")
    negate: bool = Field(True, description="Honour 'not X' / 'no X' for this slot's values.")
    decay: float | None = Field(None, ge=0.0, le=1.0, description="Confidence kept per turn it is not mentioned "
                                                                  "(default: the node's decay).")
    question: str = Field("", description="The template question (clarify without a model).")


#: the headphones domain's slots for understanding and asking: the values are the generated catalog's own
#: (llmrec/conversation/catalog.py), the synonyms and questions are how shoppers say and are asked them
HEADPHONE_SLOTS: dict[str, SlotDef] = {
    "type": SlotDef(values=list(TYPES),
                    synonyms={"over-ear": ["over ear", "overear", "around the ear", "full size"],
                              "on-ear": ["on ear"], "in-ear": ["in ear", "iem", "iems"],
                              "earbuds": ["earbud", "buds", "true wireless"]},
                    question="Do you prefer over-ear, on-ear, in-ear headphones or earbuds?"),
    "use_case": SlotDef(kind="multi", attribute="use_cases", rule="overwrite",
                        values=list(USE_CASES),
                        synonyms={"gym": ["workout", "workouts", "running", "sport", "sports", "exercise"],
                                  "travel": ["travelling", "traveling", "flights", "flying", "plane"],
                                  "office": ["work calls", "calls", "meetings", "zoom"],
                                  "gaming": ["games", "gamer", "playing"], "studio": ["mixing", "recording"],
                                  "commute": ["commuting", "train", "bus", "subway"]},
                        question="What will you mostly use them for: gym, travel, office, gaming, studio or commute?"),
    "features": SlotDef(kind="multi", flags=True,
                        values=list(FEATURES),
                        synonyms={"noise_cancelling": ["noise cancelling", "noise canceling", "noise-cancelling",
                                                       "noise-canceling", "anc", "cancel noise"],
                                  "wireless": ["bluetooth", "cordless", "no cable", "no wires"],
                                  "waterproof": ["water resistant", "sweatproof", "sweat proof", "ipx4", "ipx7"],
                                  "microphone": ["mic", "with a mic"],
                                  "long_battery": ["long battery", "battery life", "long lasting battery"],
                                  "foldable": ["folding", "folds"], "low_latency": ["low latency", "no lag"],
                                  "spatial_audio": ["spatial audio", "surround", "3d audio"]},
                        question="Which features matter to you: noise cancelling, wireless, waterproof, a "
                                 "microphone, long battery life?"),
    "budget": SlotDef(kind="numeric", question="What is the most you want to spend?"),
    "brand": SlotDef(question="Is there a brand you prefer?"),
}

#: price words: a tier, settled against the catalog's prices (a quarter of the items at each end)
TIER_WORDS = {"premium": ("premium", "high-end", "high end", "luxury", "top of the line", "top-of-the-line",
                          "flagship", "best quality"),
              "cheap": ("cheap", "inexpensive", "affordable", "budget-friendly", "low cost", "low-cost")}


class Vocabulary:
    """The values each slot can take, and how an item's attributes give them; built once per catalog."""

    def __init__(self, slots: Mapping[str, SlotDef], catalog: Catalog | None) -> None:
        self.slots = dict(slots)
        self.values: dict[str, list[str]] = {}
        for name, slot in self.slots.items():
            if slot.kind == "numeric":
                continue
            values = list(slot.values)
            if not values and catalog is not None:
                seen: dict[str, None] = {}
                for item in catalog:
                    for v in self._raw(item, name, slot):
                        seen.setdefault(v, None)
                values = sorted(seen)
            self.values[name] = values
        self.prices = sorted(i.price for i in catalog if i.price is not None) if catalog is not None else []
        self._phrases: list[tuple[re.Pattern[str], str, str]] = []
        for name, values in self.values.items():
            slot = self.slots[name]
            for value in values:
                for phrase in {value, value.replace("_", " "), value.replace("-", " "),
                               *slot.synonyms.get(value, ())}:
                    if phrase.strip():
                        pattern = re.compile(r"(?<![\w-])" + re.escape(phrase.lower()).replace(r"\ ", r"[\s-]+")
                                             + r"s?(?![\w-])")
                        self._phrases.append((pattern, name, value))
        self._phrases.sort(key=lambda p: -len(p[0].pattern))  # longest first: "noise cancelling" before "noise"

    @staticmethod
    def _raw(item: Item, name: str, slot: SlotDef) -> list[str]:
        if slot.flags:
            return [v for v in slot.values if item.attributes.get(v) is True]
        attr = slot.attribute or name
        value = item.category if attr == "category" else item.attributes.get(attr)
        if value is None or value == "":
            return []
        if slot.kind == "multi":
            return [v.strip() for v in str(value).split(",") if v.strip()]
        return [str(value)]

    def item_value(self, item: Item, name: str) -> Any:
        """What ``item`` says for slot ``name``: a str, a frozenset (multi) or a number (numeric)."""
        slot = self.slots[name]
        if slot.kind == "numeric":
            attr = slot.attribute or "price"
            raw = item.price if attr == "price" else item.attributes.get(attr)
            return float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else None
        values = self._raw(item, name, slot)
        if slot.kind == "multi":
            return frozenset(values)
        return values[0] if values else None

    def mentions(self, text: str) -> list[tuple[int, int, str, str]]:
        """(start, end, slot, value) of each known value the text mentions, without overlaps."""
        low = text.lower()
        taken: list[tuple[int, int]] = []
        found = []
        for pattern, slot, value in self._phrases:
            for m in pattern.finditer(low):
                if any(m.start() < e and s < m.end() for s, e in taken):
                    continue
                taken.append((m.start(), m.end()))
                found.append((m.start(), m.end(), slot, value))
        return sorted(found)

    def tier_price(self, tier: str) -> tuple[float | None, float | None]:
        """(min, max) price a tier word means over this catalog: the top or bottom quarter."""
        if not self.prices:
            return None, None
        if tier == "premium":
            return self.prices[(3 * len(self.prices)) // 4], None
        return None, self.prices[len(self.prices) // 4]


# -- prices and negations by rule ----------------------------------------------------------------------------------

_CURRENCY = {"$": "USD", "usd": "USD", "dollar": "USD", "dollars": "USD", "bucks": "USD", "€": "EUR", "eur": "EUR",
             "euro": "EUR", "euros": "EUR", "£": "GBP", "gbp": "GBP", "pound": "GBP", "pounds": "GBP"}
_NUM = r"(\d+(?:[.,]\d{1,2})?)\s*(k)?"
_PRE = r"(?:([$€£])\s*)?"
_POST = r"(?:\s*([$€£]|usd|eur|gbp|dollars?|euros?|pounds?|bucks)(?![a-z]))?"
_AMOUNT = _PRE + _NUM + _POST
_BETWEEN = re.compile(r"(?:between|from)\s+" + _AMOUNT + r"\s*(?:and|to|-)\s*" + _AMOUNT, re.I)
_RANGE = re.compile(_PRE + _NUM + _POST + r"\s*(?:-|–|to)\s*" + _AMOUNT, re.I)
_MAX = re.compile(r"(under|below|less than|at most|max(?:imum)?|up to|no more than|cheaper than|within|"
                  r"budget(?: is| of)?|spend(?:ing)?|around|about|<)\s*:?\s*" + _AMOUNT, re.I)
_VAGUE = ("within", "around", "about")  # "about 2 pairs": a price only with a currency
_MIN = re.compile(r"(?:over|above|more than|at least|min(?:imum)?|starting at|>)\s*:?\s*" + _AMOUNT, re.I)
_BARE = re.compile(r"(?:[$€£]\s*" + _NUM + r")|(?:" + _NUM + r"\s*([$€£]|usd|eur|gbp|dollars?|euros?|pounds?|bucks)"
                   r"(?![a-z]))", re.I)
_NEGATORS = re.compile(r"(?:\bnot\b|\bno\b|\bnothing\b|\bwithout\b|\bexcept\b|\bavoid\b|\bhate\b|\bnever\b|"
                       r"\bdon'?t\s+(?:want|like|need)\b|\bdo not\s+(?:want|like|need)\b|\banything but\b|"
                       r"\bother than\b|\bno more\b|\bnon-?)\s*(?:\w+\s+){0,2}$", re.I)
_STOP = re.compile(r"[.;!?]|(?<!anything )(?<!nothing )(?<!everything )\bbut\b|\band\b|\bor\b|,", re.I)


def _amount(num: str, k: str | None) -> float:
    value = float(num.replace(",", "."))
    return value * 1000 if k else value


def _currency(*marks: str | None) -> str | None:
    for m in marks:
        if m:
            return _CURRENCY.get(m.lower().rstrip("s"), _CURRENCY.get(m.lower()))
    return None


def parse_price(text: str) -> tuple[float | None, float | None, str | None]:
    """(min, max, currency) a message states, by rule: "under $50", "between 100 and 200", "€80", "$100-150"."""
    if m := _BETWEEN.search(text) or _RANGE.search(text):
        a, b = _amount(m.group(2), m.group(3)), _amount(m.group(6), m.group(7))
        return min(a, b), max(a, b), _currency(m.group(1), m.group(4), m.group(5), m.group(8))
    low = high = None
    currency = None
    for m in _MAX.finditer(text):
        found = _currency(m.group(2), m.group(5))
        if found or m.group(1).lower() not in _VAGUE:
            high, currency = _amount(m.group(3), m.group(4)), found
            break
    if m := _MIN.search(text):
        low, currency = _amount(m.group(2), m.group(3)), currency or _currency(m.group(1), m.group(4))
    if low is None and high is None and (m := _BARE.search(text)):
        if m.group(1) is not None:
            high = _amount(m.group(1), m.group(2))
            currency = _currency(text[m.start():m.start() + 1])
        else:
            high, currency = _amount(m.group(3), m.group(4)), _currency(m.group(5))
    return low, high, currency


def negated_at(text: str, start: int) -> bool:
    """Whether the words just before ``start`` negate what follows ("not Sony", "no wires", "anything but")."""
    before = text[max(0, start - 40):start]
    cut = max((m.end() for m in _STOP.finditer(before)), default=0)
    return bool(_NEGATORS.search(before[cut:]))


# -- llm.extract -----------------------------------------------------------------------------------------------------

#: each intent described by what a shopper says (MiniLM matches phrasings better than definitions)
DEFAULT_INTENTS: dict[str, str] = {
    "recommend": "I am looking for new headphones. What do you recommend? Show me some.",
    "refine": "I want them wireless, under 100 dollars, for the gym, over-ear, with noise cancelling.",
    "reject": "I don't like these. Show me something else, not these ones.",
    "accept": "I'll take this one. I like it, that's perfect, I want to buy it.",
    "question": "Does it have a microphone? How long does the battery last? Is it waterproof?",
    "chitchat": "Hello, thanks, goodbye, how are you?",
}
#: words the rules know: a message with none of them (and no slot value or price) was not understood
KNOWN_WORDS = frozenset(
    "i me my we a an the and or for with without some something anything else want need looking look like love "
    "show give find get please them it its this that these those is are be do does can could would you your what "
    "which how headphones headphone earphones earphone buy price cost cheap good great nice thanks thank hello hi "
    "hey yes no not more less under over than one ones too also music work gym sound quality battery best other "
    "prefer maybe sure ok okay".split())
_INTENT_WORDS = {"reject": re.compile(r"\b(don'?t like|none of (these|them)|something else|other (ones|options)|"
                                      r"not (these|those|that one)|no thanks)\b", re.I),
                 "accept": re.compile(r"\b(i'?ll take|buy (it|this|that)|perfect|sounds good|i like (it|this|that))\b",
                                      re.I),
                 "question": re.compile(r"\?\s*$"),
                 "chitchat": re.compile(r"^\s*(hi|hello|hey|thanks|thank you|bye)\b[\s!.]*$", re.I)}


class Negation(_Value):
    slot: str
    value: str


class ExtractAnswer(BaseModel):
    """The schema the model answers in (the book's query-intent output)."""

    model_config = ConfigDict(extra="forbid")

    intent: str = Field(description="One of the intents listed in the prompt.")
    features: list[str] = Field(default_factory=list)
    price_min: float | None = Field(None, ge=0)
    price_max: float | None = Field(None, ge=0)
    currency: str | None = None
    brand: str | None = None
    type: str | None = None
    use_case: str | None = None
    negations: list[Negation] = Field(default_factory=list)


class Extraction(_Value):
    """What ``llm.extract`` understood from one message."""

    text: str = ""
    intent: str = "refine"
    confidence: float = Field(0.0, ge=0.0, le=1.0, description="Of the intent.")
    slots: dict[str, Any] = Field(default_factory=dict, description="Slot -> value stated in this message "
                                                                    "(multi slots: a list; budget: the most).")
    negations: list[Negation] = Field(default_factory=list)
    price_min: float | None = None
    price_max: float | None = None
    currency: str | None = None
    tier: Literal["premium", "cheap"] | None = None
    understood: bool = Field(True, description="False when nothing in the message was recognised (no slot value, "
                                               "price or negation, and no word the rules know).")
    degraded: bool = Field(False, description="True when rules and the embedder answered instead of the model.")
    reason: str = Field("", description="Why it is degraded.")
    by: str = Field("model", description="model | rules")


class ExtractConfig(TaskConfig):
    default_template: ClassVar[str] = "query_intent.j2"
    slots: dict[str, SlotDef] = Field(default_factory=lambda: dict(HEADPHONE_SLOTS),
                                      description="The domain's slots (default: the headphones shop's).")
    intents: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_INTENTS), min_length=2,
                                    description="Intent -> the text its embedding is taken from.")
    history_template_file: str | None = Field(
        "history_processor.j2", description="The history-processor prompt (earlier turns -> a summary); null: none.")
    history_turns: int = Field(6, ge=0, description="Earlier turns the history processor reads at most.")
    summary_words: int = Field(60, ge=5)
    temperature_intent: float = Field(0.05, gt=0.0, description="Softmax temperature over the intent cosines.")

    @field_validator("history_template_file", mode="after")
    @classmethod
    def _history_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Found and confined as 'template_file' is (beside the spec, its prompts/, or built in)."""
        if value is None:
            return None
        return PromptConfig.model_validate({"template_file": value}, context=info.context).template_file


def _history_turns(history: Any, limit: int) -> list[dict[str, str]]:
    """Earlier turns as {"role", "text"}: from llmrec serve's history (inputs/outputs per turn) or plain texts."""
    turns: list[dict[str, str]] = []
    for h in list(history or [])[-limit:] if limit else []:
        if isinstance(h, str):
            turns.append({"role": "user", "text": h})
        elif isinstance(h, Mapping):
            inputs = h.get("inputs") if isinstance(h.get("inputs"), Mapping) else {}
            outputs = h.get("outputs") if isinstance(h.get("outputs"), Mapping) else {}
            said = inputs.get("message") or h.get("text") or h.get("message")
            if said:
                turns.append({"role": str(h.get("role", "user")), "text": str(said)})
            reply = outputs.get("message")
            if isinstance(reply, str) and reply:
                turns.append({"role": "assistant", "text": reply})
    return turns


def template_variables(config: Any, provides: frozenset[str], name: str) -> list[Problem]:
    """A custom template may only use the variables the node computes."""
    extra = sorted(resolve_prompt(config).names - provides)
    if not extra:
        return []
    return [Problem(f"the template uses {', '.join(repr(e) for e in extra)}, which {name} does not provide",
                    "template" if config.template is not None else "template_file",
                    f"Template variables of {name}: {', '.join(sorted(provides))}.")]


class Extract(Prompt):
    """See the module docstring. Inputs: ``message``, ``model`` (the llm resource), optional ``embedder`` (zero-shot
    intents when degraded), ``catalog`` (the slots' vocabulary), ``history`` (earlier turns)."""

    name = "llm.extract"
    description = "Understand a chat message: intent, features, price range, brand, type, use case, negations."
    Config = ExtractConfig
    provides: ClassVar[frozenset[str]] = frozenset({"message", "preferences", "intents", "slots"})

    def __init__(self, config: ExtractConfig) -> None:
        super().__init__(config)
        self._vocab: PerObjects[Vocabulary] = PerObjects()
        self._intents: PerObjects[np.ndarray] = PerObjects()
        self._lock = threading.Lock()
        self._history: Prompt | None = None
        if config.history_template_file:
            self._history = Prompt(PromptConfig(template_file=config.history_template_file,
                                                temperature=config.temperature, max_tokens=config.max_tokens))

    @classmethod
    def signature(cls, config: ExtractConfig) -> Signature:  # type: ignore[override]
        base = read_signature(cls.run)
        return Signature(params=dict(base.params), output=Extraction, variadic=False, wants_context=True)

    @classmethod
    def check(cls, config: Any, ctx: Any) -> list[Any]:
        return [*Prompt.check(config, ctx), *template_variables(config, cls.provides, cls.name)]

    def vocabulary(self, catalog: Catalog | None) -> Vocabulary:
        with self._lock:
            return self._vocab.get((catalog,), lambda: Vocabulary(self.config.slots, catalog))

    def intent_vectors(self, embedder: Embedder) -> np.ndarray:
        texts = [d or n for n, d in self.config.intents.items()]
        with self._lock:
            return self._intents.get((embedder,), lambda: embedder.encode(texts))

    async def warm(self, catalog: Catalog | None = None, embedder: Embedder | None = None, **_: Any) -> None:
        self.vocabulary(catalog)
        if embedder is not None:
            await asyncio.to_thread(self.intent_vectors, embedder)

    # llm.prompt's request with the answer schema
    def request(self, inputs: dict[str, Any], provider: Any, context: RunContext | None) -> tuple[CompletionRequest,
                                                                                                   dict[str, Any]]:
        req, info = super().request(inputs, provider, context)
        return dataclasses.replace(req, schema=ExtractAnswer), info

    def result(self, completion: Completion, context: RunContext | None) -> Any:
        return completion.parsed

    async def run(self, message: str, model: Provider | None = None, embedder: Embedder | None = None,
                  catalog: Catalog | None = None, history: list[Any] | None = None,
                  context: RunContext | None = None) -> Extraction:
        vocab = self.vocabulary(catalog)
        text = (message or "").strip()
        if not text:
            return Extraction(text="", intent="chitchat", understood=False, by="rules",
                              reason="the message is empty")
        why = Unconfigured.MESSAGE if model is None or isinstance(model, Unconfigured) else ""
        if not why:
            try:
                return await self._ask(model, text, vocab, history, context)  # type: ignore[arg-type]
            except LlmrecError as exc:
                why = f"the model failed: {exc}"
        out = await asyncio.to_thread(self.by_rules, text, vocab, embedder)
        out = out.model_copy(update={"degraded": True, "reason": why})
        record = context.record if context is not None else None
        if record is not None:  # the trace says it fell back, so every report calls the answer degraded
            record.fallback, record.fallback_reason = "rules", why
        return out

    async def _ask(self, model: Provider, text: str, vocab: Vocabulary, history: Any,
                   context: RunContext | None) -> Extraction:
        cfg = self.config
        preferences = ""
        turns = _history_turns(history, cfg.history_turns)
        if turns and self._history is not None:
            preferences = str(await self._history.run(model=model, context=context, history=turns,
                                                      max_words=cfg.summary_words)).strip()
        answer: ExtractAnswer = await Prompt.run(self, model=model, context=context, message=text,
                                                 preferences=preferences, intents=cfg.intents,
                                                 slots={n: v for n, v in vocab.values.items()})
        return self.from_answer(answer, text, vocab)

    def from_answer(self, answer: ExtractAnswer, text: str, vocab: Vocabulary) -> Extraction:
        """The model's answer, kept to the known intents and slot values (anything else is dropped)."""
        def known(slot: str, value: Any) -> str | None:
            if value is None or slot not in vocab.values:
                return None
            if not vocab.values[slot]:
                return str(value)
            low = str(value).strip().lower().replace(" ", "_")
            for v in vocab.values[slot]:
                if v.lower() in (low, low.replace("_", "-"), low.replace("_", " ")) or v.lower() == str(value).lower():
                    return v
            return None

        slots: dict[str, Any] = {}
        for name in ("type", "brand", "use_case"):
            if (v := known(name, getattr(answer, name))) is not None:
                slots[name] = [v] if vocab.slots[name].kind == "multi" else v
        feats = [v for f in answer.features if (v := known("features", f)) is not None]
        if feats:
            slots["features"] = list(dict.fromkeys(feats))
        if answer.price_max is not None and "budget" in vocab.slots:
            slots["budget"] = float(answer.price_max)
        negs = [Negation(slot=n.slot, value=v) for n in answer.negations
                if (v := known(n.slot, n.value)) is not None]
        intent = answer.intent if answer.intent in self.config.intents else next(iter(self.config.intents))
        return Extraction(text=text, intent=intent, confidence=1.0, slots=slots, negations=negs,
                          price_min=answer.price_min, price_max=answer.price_max, currency=answer.currency,
                          understood=bool(slots or negs or answer.intent in self.config.intents), by="model")

    def by_rules(self, text: str, vocab: Vocabulary, embedder: Embedder | None) -> Extraction:
        """The degraded path: prices and known values by rule, the intent by embedding similarity."""
        slots: dict[str, Any] = {}
        negations: list[Negation] = []
        for start, _end, slot, value in vocab.mentions(text):
            sd = vocab.slots[slot]
            if sd.negate and negated_at(text, start):
                negations.append(Negation(slot=slot, value=value))
            elif sd.kind == "multi":
                slots.setdefault(slot, [])
                if value not in slots[slot]:
                    slots[slot].append(value)
            else:
                slots[slot] = value
        low, high, currency = parse_price(text)
        numeric = [n for n, s in vocab.slots.items() if s.kind == "numeric"]
        if high is not None and numeric:
            slots[numeric[0]] = high
        tier = None
        lowered = text.lower()
        for name, words in TIER_WORDS.items():
            if any(re.search(r"(?<!\w)" + re.escape(w) + r"(?!\w)", lowered) for w in words):
                tier = name  # type: ignore[assignment]
        intent, confidence = self.intent_of(text, embedder, bool(slots or negations))
        words = set(re.findall(r"[a-z']+", lowered))
        understood = bool(slots or negations or low is not None or tier or words & KNOWN_WORDS)
        return Extraction(text=text, intent=intent, confidence=confidence, slots=slots, negations=negations,
                          price_min=low, price_max=high, currency=currency, tier=tier, understood=understood,
                          by="rules")

    def intent_of(self, text: str, embedder: Embedder | None, stated: bool) -> tuple[str, float]:
        names = list(self.config.intents)
        for name, pattern in _INTENT_WORDS.items():
            if name in names and pattern.search(text):
                return name, 0.9
        if embedder is None:
            return ("refine" if stated and "refine" in names else names[0]), 0.0
        cosines = self.intent_vectors(embedder) @ embedder.encode_query(text)
        z = np.exp((cosines - cosines.max()) / self.config.temperature_intent)
        probs = z / z.sum()
        best = int(np.argmax(probs))
        name = names[best]
        if stated and name in ("chitchat", "question") and "refine" in names:
            name = "refine"  # a message that states a slot value refines, whatever it sounds like
        return name, round(float(probs[best]), 4)


# -- dst.merge -------------------------------------------------------------------------------------------------------


class MergeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slots: dict[str, SlotDef] = Field(default_factory=lambda: dict(HEADPHONE_SLOTS))
    decay: float = Field(0.9, ge=0.0, le=1.0, description="Confidence a slot keeps per turn it is not mentioned.")
    forget_below: float = Field(0.0, ge=0.0, le=1.0, description="Drop a slot whose confidence falls below this.")
    degraded_confidence: float = Field(0.8, ge=0.0, le=1.0,
                                       description="The confidence of a value the rules (not a model) extracted.")
    max_conflicts: int = Field(20, ge=1, description="Conflicts kept in the state (the latest).")


class Merge(NodeType):
    """See the module docstring. Inputs: ``state`` (the session's), ``extraction``, ``catalog`` (contradictions)."""

    name = "dst.merge"
    description = "Slot memory: merge a turn's extraction into the dialogue state by per-slot rules; conflicts kept."
    Config = MergeConfig
    inline = True

    def __init__(self, config: MergeConfig) -> None:
        super().__init__(config)
        self._vocab: PerObjects[Vocabulary] = PerObjects()

    async def run(self, state: DialogueState | None, extraction: Extraction,
                  catalog: Catalog | None = None, history: list[Any] | None = None) -> DialogueState:
        state = state or DialogueState()
        if extraction.intent == "reject":  # the items the last turn showed are turned down
            shown = [i for i in last_shown(history) if i not in state.rejected]
            if shown:
                state = state.model_copy(update={"rejected": [*state.rejected, *shown]})
        return merge(state, extraction, self.config,
                     self._vocab.get((catalog,), lambda: Vocabulary(self.config.slots, catalog)), catalog)


def last_shown(history: Any) -> list[str]:
    """The item ids the latest earlier turn showed (its outputs' ``items``, as llmrec serve keeps a session's
    turns), or none."""
    for turn in reversed(list(history or [])):
        outputs = turn.get("outputs") if isinstance(turn, Mapping) else None
        if not isinstance(outputs, Mapping):
            continue
        items = outputs.get("items")
        if isinstance(items, list) and items:
            return [str(i["id"]) for i in items if isinstance(i, Mapping) and i.get("id") is not None]
        return []
    return []


def _rule(slot: SlotDef) -> str:
    return slot.rule or ("accumulate" if slot.kind == "multi" else "overwrite")


def merge(state: DialogueState, ex: Extraction, cfg: MergeConfig, vocab: Vocabulary,
          catalog: Catalog | None = None) -> DialogueState:
    """The next state: ``state`` updated by ``ex`` under ``cfg``'s rules (see :class:`Merge`)."""
    turn = state.turn + 1
    slots = dict(state.slots)
    negated = {k: list(v) for k, v in state.negated.items()}
    confidence = dict(state.confidence)
    conflicts = list(state.conflicts)
    fresh = cfg.degraded_confidence if ex.degraded else 1.0
    mentioned: set[str] = set()
    stated = dict(ex.slots)
    if ex.price_min is not None:
        stated["budget_min"] = ex.price_min
    if ex.tier is not None:
        stated["tier"] = ex.tier
    for name, value in stated.items():
        slot = cfg.slots.get(name, SlotDef(kind="numeric") if name == "budget_min" else SlotDef())
        old = slots.get(name)
        mentioned.add(name)
        if _rule(slot) == "accumulate" and slot.kind == "multi":
            merged = list(dict.fromkeys([*(old or []), *(value if isinstance(value, list) else [value])]))
            slots[name] = merged
        else:
            if old is not None and old != value:
                conflicts.append(SlotConflict(slot=name, old=old, new=value, rule="overwrite", turn=turn))
            slots[name] = value
        confidence[name] = fresh
        ruled = negated.get(name, [])
        for v in value if isinstance(value, list) else [value]:
            if v in ruled:  # said again: no longer ruled out
                conflicts.append(SlotConflict(slot=name, old={"not": v}, new=v, rule="negate", turn=turn))
                ruled.remove(v)
        if name in negated and not ruled:
            negated.pop(name)
    for neg in ex.negations:
        slot = cfg.slots.get(neg.slot)
        if slot is None or not slot.negate:
            continue
        ruled = negated.setdefault(neg.slot, [])
        if neg.value not in ruled:
            ruled.append(neg.value)
        current = slots.get(neg.slot)
        if isinstance(current, list) and neg.value in current:
            slots[neg.slot] = [v for v in current if v != neg.value]
            conflicts.append(SlotConflict(slot=neg.slot, old=current, new={"not": neg.value}, rule="negate",
                                          turn=turn))
            if not slots[neg.slot]:
                slots.pop(neg.slot)
        elif current == neg.value:
            slots.pop(neg.slot)
            conflicts.append(SlotConflict(slot=neg.slot, old=current, new={"not": neg.value}, rule="negate",
                                          turn=turn))
        mentioned.add(neg.slot)
    for name in list(slots):
        if name in mentioned:
            continue
        slot = cfg.slots.get(name)
        keep = slot.decay if slot is not None and slot.decay is not None else cfg.decay
        confidence[name] = round(confidence.get(name, 1.0) * keep, 6)
        if confidence[name] < cfg.forget_below:
            conflicts.append(SlotConflict(slot=name, old=slots.pop(name), new=None, rule="decay", turn=turn))
            confidence.pop(name)
    if catalog is not None:
        conflicts += contradictions(slots, negated, vocab, catalog, turn)
    asked = list(state.asked)
    return DialogueState(slots=slots, negated=negated, confidence=confidence, asked=asked,
                         rejected=list(state.rejected), conflicts=conflicts[-cfg.max_conflicts:], turn=turn)


def _constraints(slots: Mapping[str, Any], negated: Mapping[str, Sequence[Any]], vocab: Vocabulary
                 ) -> dict[str, Any]:
    """Each hard constraint of a state as a test of an item: name -> (value, predicate)."""
    out: dict[str, Any] = {}
    for name, value in slots.items():
        if name == "tier":
            low, high = vocab.tier_price(str(value))
            out[name] = (value, (lambda it, lo=low, hi=high: it.price is not None and (lo is None or it.price >= lo)
                                 and (hi is None or it.price <= hi)))
        elif name == "budget_min":
            out[name] = (value, lambda it, v=float(value): it.price is not None and it.price >= v)
        elif name in vocab.slots:
            kind = vocab.slots[name].kind
            if kind == "numeric":
                out[name] = (value, lambda it, n=name, v=float(value): (x := vocab.item_value(it, n)) is not None
                             and x <= v)
            elif kind == "multi":
                want = set(value if isinstance(value, list) else [value])
                if vocab.slots[name].flags:  # every feature asked for
                    out[name] = (value, lambda it, n=name, w=want: w <= vocab.item_value(it, n))
                else:  # any of the use cases
                    out[name] = (value, lambda it, n=name, w=want: bool(w & vocab.item_value(it, n)))
            else:
                out[name] = (value, lambda it, n=name, v=str(value): vocab.item_value(it, n) == v)
    for name, ruled in negated.items():
        if name in vocab.slots and ruled:
            kind = vocab.slots[name].kind
            out[f"not {name}"] = ({"not": list(ruled)}, (
                lambda it, n=name, r=set(map(str, ruled)), k=kind:
                not ((vocab.item_value(it, n) or frozenset()) & r if k == "multi" else vocab.item_value(it, n) in r)))
    return out


def contradictions(slots: Mapping[str, Any], negated: Mapping[str, Sequence[Any]], vocab: Vocabulary,
                   catalog: Catalog, turn: int) -> list[SlotConflict]:
    """Constraints no catalog item satisfies together: a conflict for the smallest set of them to drop, the
    slot most worth relaxing as ``slot`` (``new``: its value, ``old``: what it contradicts)."""
    tests = _constraints(slots, negated, vocab)
    if len(tests) < 1:
        return []
    items = list(catalog)
    if any(all(p(it) for _, p in tests.values()) for it in items):
        return []
    names = list(tests)
    if len(names) == 1:  # one constraint no item meets on its own (a budget below every price)
        n = names[0]
        return [SlotConflict(slot=n.removeprefix("not "), old=None, new=tests[n][0], rule="constraint", turn=turn)]
    best: tuple[int, str] | None = None
    for n in names:  # which one, dropped, lets the most items through
        others = [p for m, (_, p) in tests.items() if m != n]
        fits = sum(1 for it in items if all(p(it) for p in others))
        if fits and (best is None or fits > best[0]):
            best = (fits, n)
    if best is None:  # no single constraint to drop: name the first two
        n, m = names[0], names[1]
        return [SlotConflict(slot=n, old={m: tests[m][0]}, new=tests[n][0], rule="constraint", turn=turn)]
    n = best[1]
    _, p_n = tests[n]
    against = {}
    for m, (v, p_m) in tests.items():  # the constraints it cannot be met together with
        if m != n and not any(p_n(it) and p_m(it) for it in items):
            against[m] = v
    if not against:
        against = {m: v for m, (v, _) in tests.items() if m != n}
    return [SlotConflict(slot=n.removeprefix("not "), old=against, new=tests[n][0], rule="constraint", turn=turn)]


def matching(catalog: Catalog, state: DialogueState, vocab: Vocabulary, exclude: Iterable[str] = ()
             ) -> list[tuple[Item, int, int]]:
    """(item, constraints met, constraints) for every catalog item not excluded, best first (then cheaper, id)."""
    tests = list(_constraints(state.slots, state.negated, vocab).values())
    skip = set(exclude) | set(state.rejected)
    rows = [(it, sum(1 for _, p in tests if p(it)), len(tests)) for it in catalog if it.id not in skip]
    rows.sort(key=lambda r: (-r[1], r[0].price if r[0].price is not None else math.inf, r[0].id))
    return rows


def open_conflict(state: DialogueState) -> SlotConflict | None:
    """The contradiction found this turn, if any (what clarify asks about before anything else)."""
    for c in reversed(state.conflicts):
        if c.turn == state.turn and c.rule == "constraint":
            return c
    return None


# -- clarify ---------------------------------------------------------------------------------------------------------


class Clarification(_Value):
    """The question ``clarify`` asks."""

    question: str
    slot: str | None = None
    options: list[str] = Field(default_factory=list)
    gains: dict[str, float] = Field(default_factory=dict, description="Per unknown slot: the expected "
                                                                      "information gain (bits) over the candidates.")
    candidates: int = Field(0, description="Items matching the known slots.")
    conflict: SlotConflict | None = None
    degraded: bool = False
    reason: str = ""


class ClarifyConfig(TaskConfig):
    default_template: ClassVar[str] = "clarify.j2"
    slots: dict[str, SlotDef] = Field(default_factory=lambda: dict(HEADPHONE_SLOTS))
    ask: list[str] | None = Field(None, description="The slots it may ask about (default: every slot).")
    max_options: int = Field(6, ge=0, description="Options listed in a question at most.")


def entropy(labels: Iterable[Any]) -> float:
    """Shannon entropy (bits) of a list of labels."""
    counts: dict[Any, int] = {}
    n = 0
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
        n += 1
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def information_gain(items: Sequence[Item], slot: str, vocab: Vocabulary) -> float:
    """The expected information gain of asking ``slot`` over ``items``: the entropy of its values among them
    (the answer settles the value). Multi slots: the mean entropy of each value's presence; numeric slots: of
    the items' price quartiles."""
    sd = vocab.slots[slot]
    values = [vocab.item_value(it, slot) for it in items]
    if sd.kind == "numeric":
        nums = sorted(v for v in values if v is not None)
        if len(nums) < 2:
            return 0.0
        cuts = [nums[len(nums) * q // 4] for q in (1, 2, 3)]
        return entropy(sum(v > c for c in cuts) for v in nums)
    if sd.kind == "multi":
        universe = sorted(set().union(*values)) if values else []
        return sum(entropy(u in v for v in values) for u in universe) / len(universe) if universe else 0.0
    return entropy(str(v) for v in values if v is not None)


def _money(x: Any) -> str:
    try:
        return f"${float(x):,.0f}"
    except (TypeError, ValueError):
        return str(x)


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v).replace("_", " ") for v in value)
    if isinstance(value, dict) and "not" in value:
        return "not " + _shown(value["not"])
    return str(value).replace("_", " ")


def conflict_text(conflict: SlotConflict, vocab: Vocabulary, catalog: Catalog | None) -> str:
    """One sentence saying what cannot be had together, and what the closest option is."""
    new = conflict.new
    against = conflict.old if isinstance(conflict.old, dict) else {}
    parts = ", ".join(f"{_shown(v)}" if k not in ("budget", "budget_min") else
                      (f"under {_money(v)}" if k == "budget" else f"over {_money(v)}") for k, v in against.items())
    if conflict.slot == "budget":
        tier = f"{_shown(against['tier'])} " if "tier" in against else ""
        parts = ", ".join(_shown(v) for k, v in against.items() if k not in ("tier", "budget_min"))
        head = f"I found no {tier}headphones under {_money(new)}" + (f" with {parts}" if parts else "")
        cheapest = None
        if catalog is not None and against:
            tests = _constraints({k: v for k, v in against.items() if not k.startswith("not ")}, {}, vocab)
            prices = [it.price for it in catalog if it.price is not None and all(p(it) for _, p in tests.values())]
            cheapest = min(prices) if prices else None
        tail = f" (the cheapest is {_money(cheapest)})" if cheapest is not None else ""
        return head + tail
    if conflict.slot == "tier":
        return f"'{_shown(new)}' does not go with " + (parts or "the other things you asked for")
    return f"I found nothing that is {_shown(new)}" + (f" and {parts}" if parts else "") + " at once"


class Clarify(Prompt):
    """See the module docstring. Inputs: ``state``, ``catalog``, optional ``decision`` (a policy's), ``model``."""

    name = "clarify"
    description = "Ask the clarifying question: the conflict, the policy's slot, or the most informative slot."
    Config = ClarifyConfig
    provides: ClassVar[frozenset[str]] = frozenset({"slot", "options", "known", "conflict", "draft"})

    def __init__(self, config: ClarifyConfig) -> None:
        super().__init__(config)
        self._vocab: PerObjects[Vocabulary] = PerObjects()
        self._lock = threading.Lock()

    @classmethod
    def signature(cls, config: ClarifyConfig) -> Signature:  # type: ignore[override]
        params = dict(read_signature(cls.run).params)
        params["model"] = Param("model", Provider | None, False)
        return Signature(params=params, output=Clarification, variadic=False, wants_context=True)

    @classmethod
    def check(cls, config: Any, ctx: Any) -> list[Any]:
        unknown = [s for s in config.ask or [] if s not in config.slots]
        problems = [*Prompt.check(config, ctx), *template_variables(config, cls.provides, cls.name)]
        if unknown:
            problems.append(Problem(f"clarify may only ask about its slots; unknown: {', '.join(unknown)}", "ask",
                                    f"Its slots: {', '.join(config.slots)}."))
        return problems

    def vocabulary(self, catalog: Catalog | None) -> Vocabulary:
        with self._lock:
            return self._vocab.get((catalog,), lambda: Vocabulary(self.config.slots, catalog))

    async def warm(self, catalog: Catalog | None = None, **_: Any) -> None:
        self.vocabulary(catalog)

    def plan(self, state: DialogueState, catalog: Catalog | None, decision: Decision | None
             ) -> tuple[str | None, dict[str, float], int, SlotConflict | None]:
        """(slot to ask, gains per unknown slot, matching candidates, the conflict to resolve)."""
        vocab = self.vocabulary(catalog)
        conflict = open_conflict(state)
        askable = [s for s in (self.config.ask or list(self.config.slots)) if s in vocab.slots]
        unknown = [s for s in askable if s not in state.slots and s not in state.asked]
        rows = matching(catalog, state, vocab) if catalog is not None else []
        full = [it for it, met, total in rows if met == total]
        pool = full or [it for it, _, _ in rows[:60]]
        gains = {s: round(information_gain(pool, s, vocab), 4) for s in unknown} if pool else {}
        if conflict is not None:
            return conflict.slot, gains, len(full), conflict
        if decision is not None and decision.slot:
            return decision.slot, gains, len(full), None
        if gains:
            slot = max(gains, key=lambda s: (gains[s], -askable.index(s)))
            return slot, gains, len(full), None
        return (unknown[0] if unknown else None), gains, len(full), None

    def draft(self, slot: str | None, conflict: SlotConflict | None, vocab: Vocabulary,
              catalog: Catalog | None, understood: bool) -> tuple[str, list[str], str]:
        """(template question, options, the conflict as text)."""
        sd = self.config.slots.get(slot or "")
        options = [v.replace("_", " ") for v in vocab.values.get(slot or "", [])][: self.config.max_options]
        if conflict is not None:
            text = conflict_text(conflict, vocab, catalog)
            if conflict.slot == "budget":
                against = conflict.old if isinstance(conflict.old, dict) else {}
                drop = " and ".join(_shown(v) for k, v in against.items() if k not in ("tier", "budget_min"))
                q = (f"{text}. Would you raise your budget" + (f", or do without {drop}" if drop else "")
                     + (", or look at less premium models" if against.get("tier") == "premium" else "") + "?")
            else:
                q = f"{text}. Which matters more to you?"
            return q, options, text
        if slot is None:
            return "Is there anything else that matters to you?", [], ""
        base = sd.question if sd is not None and sd.question else f"What {slot.replace('_', ' ')} would you like?"
        if not understood:
            base = "Sorry, I did not catch that (I understand English). " + base
        return base, options, ""

    async def run(self, state: DialogueState | None, catalog: Catalog | None = None,
                  decision: Decision | None = None, extraction: Extraction | None = None,
                  context: RunContext | None = None, **inputs: Any) -> Clarification:
        state = state or DialogueState()
        vocab = self.vocabulary(catalog)
        slot, gains, n, conflict = self.plan(state, catalog, decision)
        understood = extraction is None or extraction.understood
        draft, options, conflict_said = self.draft(slot, conflict, vocab, catalog, understood)
        model = inputs.get("model")
        common = {"slot": slot, "options": options, "gains": gains, "candidates": n, "conflict": conflict}
        why = Unconfigured.MESSAGE if model is None or isinstance(model, Unconfigured) else ""
        if not why:
            try:
                text = await Prompt.run(self, model=model, context=context, slot=slot or "", options=options,
                                        known=dict(state.slots), conflict=conflict_said, draft=draft)
                question = str(text).strip()
                if question:
                    return Clarification(question=question, **common)
                why = "the model gave an empty question"
            except LlmrecError as exc:
                why = f"the model failed: {exc}"
        record = context.record if context is not None else None
        if record is not None:
            record.fallback, record.fallback_reason = "template", why
        return Clarification(question=draft, degraded=True, reason=why, **common)


# -- dst.candidates and dialogue.answer ------------------------------------------------------------------------------


class CandidatesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slots: dict[str, SlotDef] = Field(default_factory=lambda: dict(HEADPHONE_SLOTS))
    k: int = Field(50, ge=1, description="Candidates returned at most.")
    partial: bool = Field(True, description="When no item meets every constraint, return those meeting most.")


class StateCandidates(NodeType):
    """The catalog items that fit a dialogue state: every hard constraint met first, then most; score = the share
    met. Items the user rejected are never returned."""

    name = "dst.candidates"
    description = "Candidates from the catalog that fit a dialogue state's slots and negations."
    Config = CandidatesConfig
    inline = True

    def __init__(self, config: CandidatesConfig) -> None:
        super().__init__(config)
        self._vocab: PerObjects[Vocabulary] = PerObjects()

    async def run(self, state: DialogueState | None, catalog: Catalog, exclude: list[str] | None = None,
                  k: int | None = None) -> Candidates:
        state = state or DialogueState()
        vocab = self._vocab.get((catalog,), lambda: Vocabulary(self.config.slots, catalog))
        rows = matching(catalog, state, vocab, exclude or ())
        n = count_or(k, self.config.k)
        if not self.config.partial and rows and rows[0][2]:
            rows = [r for r in rows if r[1] == r[2]]
        items = [ScoredItem.trusted(it.id, round(met / total, 6) if total else 1.0, {"state": met})
                 for it, met, total in rows[:n]]
        return Candidates(items=items, source="state")


class Answer(_Value):
    """One chat turn's reply."""

    message: str
    action: str = Field(description="ask | recommend | end")
    items: list[Recommendation] = Field(default_factory=list)
    slot: str | None = None
    state: DialogueState | None = Field(None, description="The state after this turn: the slot asked is recorded "
                                                          "in 'asked' (a spec's 'state.update' names this field).")


class AnswerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(3, ge=1, description="Items shown with a recommendation.")


class DialogueAnswer(NodeType):
    """The reply of a turn: the clarifying question when the policy asks (or a conflict needs settling), else the
    best candidates with a short reason each (which of the user's constraints they meet)."""

    name = "dialogue.answer"
    description = "Compose a chat turn's reply: the question, or the recommended items with reasons."
    Config = AnswerConfig
    inline = True

    async def run(self, decision: Decision | None = None, question: Clarification | None = None,
                  candidates: Candidates | None = None, catalog: Catalog | None = None,
                  state: DialogueState | None = None, k: int | None = None) -> Answer:
        action = decision.action if decision is not None else ("ask" if question is not None else "recommend")
        if question is not None and (action == "ask" or question.conflict is not None):
            after = state
            if state is not None and question.slot and question.conflict is None and question.slot not in state.asked:
                after = state.model_copy(update={"asked": [*state.asked, question.slot]})
            return Answer(message=question.question, action="ask", slot=question.slot, state=after)
        if action == "end":
            return Answer(message="Thanks for chatting. Come back any time!", action="end", state=state)
        n = count_or(k, self.config.k)
        shown: list[Recommendation] = []
        for c in (candidates.items if candidates is not None else []):
            item = catalog.get(c.id) if catalog is not None else None
            if item is None:
                continue
            wanted = state.slots if state is not None else {}
            reason = ", ".join(_shown(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else
                               f"under {_money(v)}" for s, v in wanted.items() if s not in ("tier", "budget_min"))
            shown.append(Recommendation.trusted(len(shown) + 1, item.id, item.title, item.category, item.price,
                                                round(c.score, 6), f"fits: {reason}" if reason else "popular pick"))
            if len(shown) >= n:
                break
        if not shown:
            return Answer(message="I could not find headphones that fit. Could you loosen a requirement?",
                          action="ask", state=state)
        listing = "; ".join(f"{r.title} ({_money(r.price)})" for r in shown)
        return Answer(message=f"Here are {len(shown)} I would suggest: {listing}.", action="recommend", items=shown,
                      state=state)


@hookimpl
def llmrec_register_node_types(register: Any) -> None:
    for cls in (Extract, Merge, Clarify, StateCandidates, DialogueAnswer):
        register(cls)


__all__ = ["Answer", "Clarification", "ExtractAnswer", "Extraction", "HEADPHONE_SLOTS", "Negation", "SlotDef",
           "Vocabulary", "contradictions", "entropy", "information_gain", "merge", "matching", "negated_at",
           "open_conflict", "parse_price"]
