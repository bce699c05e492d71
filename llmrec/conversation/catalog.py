"""A seeded headphones catalog and the slot schema of its domain (book chapter 5).

The catalog is generated, never shipped as data: :func:`generate_headphones` builds the same few hundred items
for the same seed (``random.Random(seed)`` only). Each item is a :class:`llmrec.data.Item` whose
``category`` is its type (over-ear, on-ear, in-ear, earbuds) and whose attributes hold what the slots ask about:
``brand``, ``type``, one boolean per feature (``noise_cancelling``, ``wireless``...) and ``use_cases``
(comma-separated, from :data:`USE_CASES`). Use cases follow from features and type (gym: waterproof in-ears or
earbuds; studio: wired over-ears without noise cancelling...), and prices from type, features and brand tier, so
what a user says about one slot tells something about the others, which is what a clarifying policy exploits.

:data:`HEADPHONE_SLOTS` is the domain's slot schema as data: slot names, kinds (``categorical``: one value;
``multi``: a set of values; ``numeric``: a number such as the budget) and value sets.
:func:`matching_items` ranks a catalog by what a dialogue state says (the recommendation step of the simulator,
the gymnasium environment and the policies).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..data.catalog import Catalog, Item

TYPES: tuple[str, ...] = ("over-ear", "on-ear", "in-ear", "earbuds")
FEATURES: tuple[str, ...] = ("noise_cancelling", "wireless", "waterproof", "microphone", "long_battery", "foldable",
                             "low_latency", "spatial_audio")
USE_CASES: tuple[str, ...] = ("gym", "travel", "office", "gaming", "studio", "commute")
BRANDS: tuple[tuple[str, float], ...] = (  # (brand, price tier multiplier)
    ("Auralite", 0.7), ("Voltix", 0.8), ("Quantum Audio", 1.0), ("Nimbus Sound", 1.0), ("Resonance", 1.25),
    ("Harmonia", 1.5), ("Studio Forge", 1.35), ("Pulse", 0.85),
)
#: base price range per type (USD)
BASE_PRICE: dict[str, tuple[float, float]] = {
    "over-ear": (60.0, 180.0), "on-ear": (35.0, 110.0), "in-ear": (20.0, 90.0), "earbuds": (25.0, 120.0),
}
#: what each feature adds to the price (USD)
FEATURE_PREMIUM: dict[str, float] = {
    "noise_cancelling": 70.0, "wireless": 30.0, "waterproof": 15.0, "microphone": 8.0, "long_battery": 20.0,
    "foldable": 5.0, "low_latency": 25.0, "spatial_audio": 40.0,
}
#: probability of each feature per type
FEATURE_ODDS: dict[str, dict[str, float]] = {
    "over-ear": {"noise_cancelling": 0.55, "wireless": 0.65, "waterproof": 0.05, "microphone": 0.55,
                 "long_battery": 0.5, "foldable": 0.45, "low_latency": 0.3, "spatial_audio": 0.3},
    "on-ear": {"noise_cancelling": 0.3, "wireless": 0.7, "waterproof": 0.1, "microphone": 0.6, "long_battery": 0.4,
               "foldable": 0.6, "low_latency": 0.15, "spatial_audio": 0.1},
    "in-ear": {"noise_cancelling": 0.35, "wireless": 0.45, "waterproof": 0.55, "microphone": 0.7,
               "long_battery": 0.2, "foldable": 0.0, "low_latency": 0.2, "spatial_audio": 0.1},
    "earbuds": {"noise_cancelling": 0.45, "wireless": 1.0, "waterproof": 0.6, "microphone": 0.85,
                "long_battery": 0.3, "foldable": 0.0, "low_latency": 0.25, "spatial_audio": 0.35},
}
MODELS = ("Aria", "Bolt", "Cadence", "Drift", "Echo", "Flux", "Glide", "Halo", "Ion", "Jet", "Kite", "Lumen", "Mono",
          "Nova", "Orbit", "Pulse", "Quill", "Rift", "Sonic", "Tempo")

SlotKind = Literal["categorical", "multi", "numeric"]


@dataclass(frozen=True)
class Slot:
    """One thing a user can tell: its name, kind, the values it takes (categorical and multi) or its range."""

    name: str
    kind: SlotKind
    values: tuple[str, ...] = ()
    low: float | None = None  # numeric slots: the range of sensible values
    high: float | None = None
    question: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "question": self.question}
        if self.kind == "numeric":
            out.update(low=self.low, high=self.high)
        else:
            out["values"] = list(self.values)
        return out


@dataclass(frozen=True)
class SlotSchema:
    """The slots of one domain, in a fixed order (the order of a policy's ask actions)."""

    slots: tuple[Slot, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.slots)

    def __getitem__(self, name: str) -> Slot:
        for s in self.slots:
            if s.name == name:
                return s
        raise KeyError(f"no slot {name!r} (slots: {', '.join(self.names)})")

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def to_dict(self) -> dict[str, Any]:
        return {"slots": [s.to_dict() for s in self.slots]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SlotSchema:
        return cls(tuple(Slot(name=d["name"], kind=d["kind"], values=tuple(d.get("values") or ()),
                              low=d.get("low"), high=d.get("high"), question=d.get("question", ""))
                         for d in data["slots"]))


HEADPHONE_SLOTS = SlotSchema((
    Slot("type", "categorical", TYPES, question="Do you prefer over-ear, on-ear, in-ear or earbuds?"),
    Slot("use_case", "categorical", USE_CASES, question="What will you mostly use them for?"),
    Slot("features", "multi", FEATURES, question="Which features matter to you (noise cancelling, wireless...)?"),
    Slot("budget", "numeric", low=20.0, high=500.0, question="What is the most you want to spend?"),
    Slot("brand", "categorical", tuple(b for b, _ in BRANDS), question="Any brand you prefer?"),
))


def item_features(item: Item) -> frozenset[str]:
    """The features an item has (its boolean feature attributes that are true)."""
    return frozenset(f for f in FEATURES if item.attributes.get(f) is True)


def item_use_cases(item: Item) -> frozenset[str]:
    """The use cases an item suits."""
    raw = item.attributes.get("use_cases", "")
    return frozenset(u for u in str(raw).split(",") if u)


def item_type(item: Item) -> str:
    return str(item.attributes.get("type", item.category))


def _use_cases(kind: str, feats: frozenset[str]) -> list[str]:
    out = []
    if "waterproof" in feats and kind in ("in-ear", "earbuds"):
        out.append("gym")
    if "noise_cancelling" in feats and ({"foldable", "long_battery"} & feats or kind in ("in-ear", "earbuds")):
        out.append("travel")
    if "microphone" in feats and kind in ("over-ear", "on-ear", "earbuds"):
        out.append("office")
    if "low_latency" in feats and "microphone" in feats and kind in ("over-ear", "on-ear"):
        out.append("gaming")
    if kind == "over-ear" and "wireless" not in feats and "noise_cancelling" not in feats:
        out.append("studio")
    if "wireless" in feats and ("noise_cancelling" in feats or kind == "earbuds"):
        out.append("commute")
    return out


def _charm(value: float) -> float:
    return round(math.floor(value) + 0.99, 2)


def generate_headphones(seed: int = 5, n_items: int = 300) -> Catalog:
    """The headphones catalog: ``n_items`` items ``h001...``, the same for the same seed."""
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise ValueError(f"n_items must be a positive integer, got {n_items!r}")
    rng = random.Random(seed)
    width = max(3, len(str(n_items)))
    items: list[Item] = []
    titles: set[str] = set()
    for index in range(1, n_items + 1):
        kind = TYPES[(index - 1) % len(TYPES)] if index <= len(TYPES) else rng.choice(TYPES)
        feats = {f for f, p in FEATURE_ODDS[kind].items() if rng.random() < p}
        if kind == "over-ear" and "studio" not in _use_cases(kind, frozenset(feats)) and rng.random() < 0.2:
            feats -= {"wireless", "noise_cancelling"}  # keep some wired studio monitors
        frozen = frozenset(feats)
        brand, tier = rng.choice(BRANDS)
        lo, hi = BASE_PRICE[kind]
        raw = (rng.uniform(lo, hi) + sum(FEATURE_PREMIUM[f] for f in frozen)) * tier * rng.uniform(0.9, 1.1)
        model = rng.choice(MODELS)
        title = f"{brand} {model} {rng.randint(1, 9)}{rng.choice(('', ' Pro', ' Lite', ' Max', ' Air'))}"
        while title in titles:
            title += " II"
        titles.add(title)
        uses = _use_cases(kind, frozen)
        named = [f.replace("_", " ") for f in FEATURES if f in frozen]
        description = (f"{kind.capitalize()} headphones by {brand}"
                       + (f" with {', '.join(named)}" if named else ", wired and simple")
                       + (f". Good for {', '.join(uses)}." if uses else "."))
        attributes: dict[str, str | int | float | bool] = {"brand": brand, "type": kind, "use_cases": ",".join(uses)}
        attributes.update({f: f in frozen for f in FEATURES})
        items.append(Item(id=f"h{index:0{width}d}", title=title, description=description, category=kind,
                          price=_charm(max(raw, 9.0)), attributes=attributes))
    return Catalog(items)


# -- matching a dialogue state against the catalog ----------------------------------------------------------------


def as_set(value: Any) -> frozenset[str]:
    """A slot value as a set of strings (a multi slot's list, or one value)."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, Iterable):
        return frozenset(str(v) for v in value)
    return frozenset({str(value)})


def item_slot_values(item: Item) -> dict[str, Any]:
    """What an item says for each headphone slot: type, use cases, features, price, brand."""
    return {"type": item_type(item), "use_case": item_use_cases(item), "features": item_features(item),
            "budget": item.price, "brand": item.attributes.get("brand")}


def _wanted(slots: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Known slot values normalised once: a float budget, sets for the rest."""
    out: list[tuple[str, Any]] = []
    for name, wanted in slots.items():
        if wanted is None or name not in SLOT_NAMES:
            continue
        if name == "budget":
            try:
                out.append((name, float(wanted)))
            except (TypeError, ValueError):
                continue
        else:
            out.append((name, as_set(wanted)))
    return out


SLOT_NAMES = frozenset({"type", "use_case", "features", "budget", "brand"})


def _match(values: Mapping[str, Any], wanted: list[tuple[str, Any]],
           negated: list[tuple[str, frozenset[str]]]) -> float:
    total, score = 0, 0.0
    for name, want in wanted:
        total += 1
        have = values[name]
        if name == "budget":
            price = have if have is not None else math.inf
            score += 1.0 if price <= want else max(0.0, 1.0 - (price - want) / want) if want > 0 else 0.0
        elif name == "features":
            score += len(want & have) / len(want) if want else 1.0
        elif name == "use_case":
            score += 1.0 if want & have else 0.0
        else:
            score += 1.0 if str(have) in want else 0.0
    for name, ruled_out in negated:
        have = values.get(name)
        if have is None:
            continue
        if (have if isinstance(have, frozenset) else frozenset({str(have)})) & ruled_out:
            total += 1
    return score / total if total else 1.0


def _negated(negated: Mapping[str, Sequence[Any]] | None) -> list[tuple[str, frozenset[str]]]:
    return [(n, frozenset(str(v) for v in vals)) for n, vals in (negated or {}).items() if n in SLOT_NAMES]


def slot_match(item: Item, slots: Mapping[str, Any], negated: Mapping[str, Sequence[Any]] | None = None) -> float:
    """How well ``item`` fits the known ``slots`` (each known slot counts once, in [0, 1]; a budget the item
    exceeds by x% scores 1 - x%); a negated value the item has costs a whole slot."""
    return _match(item_slot_values(item), _wanted(slots), _negated(negated))


_VALUES: dict[int, tuple[Catalog, list[tuple[Item, dict[str, Any]]]]] = {}


def catalog_values(catalog: Catalog) -> list[tuple[Item, dict[str, Any]]]:
    """Every item with its :func:`item_slot_values`, computed once per catalog object."""
    hit = _VALUES.get(id(catalog))
    if hit is not None and hit[0] is catalog:
        return hit[1]
    values = [(item, item_slot_values(item)) for item in catalog]
    if len(_VALUES) > 16:
        _VALUES.clear()
    _VALUES[id(catalog)] = (catalog, values)
    return values


def matching_items(catalog: Catalog, slots: Mapping[str, Any], *, k: int = 10, exclude: Iterable[str] = (),
                   negated: Mapping[str, Sequence[Any]] | None = None) -> list[tuple[Item, float]]:
    """The ``k`` items that fit ``slots`` best (ties: the cheaper first, then id), without ``exclude``."""
    skip = set(exclude)
    wanted, ruled_out = _wanted(slots), _negated(negated)
    scored = [(item, _match(values, wanted, ruled_out)) for item, values in catalog_values(catalog)
              if item.id not in skip]
    scored.sort(key=lambda pair: (-pair[1], pair[0].price if pair[0].price is not None else math.inf, pair[0].id))
    return scored[:k]


def slot_entropy(catalog: Catalog | Sequence[Item], slot: str) -> float:
    """The entropy (bits) of ``slot``'s values over ``catalog``: how much asking about it can split the items.
    Multi slots count each value's presence as its own binary split (summed); numeric slots use price quartiles."""
    items = list(catalog)
    if not items:
        return 0.0
    values = [item_slot_values(it).get(slot) for it in items]

    def entropy(labels: list[Any]) -> float:
        counts: dict[Any, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        n = len(labels)
        return -sum(c / n * math.log2(c / n) for c in counts.values())

    if slot == "budget":
        prices = sorted(p for p in values if p is not None)
        if not prices:
            return 0.0
        cuts = [prices[len(prices) * q // 4] for q in (1, 2, 3)]
        return entropy([sum(p > c for c in cuts) for p in prices])
    if values and isinstance(values[0], frozenset):
        universe = sorted(set().union(*values))
        return sum(entropy([v in vals for vals in values]) for v in universe) / max(1, len(universe)) * 2
    return entropy([str(v) for v in values])


__all__ = [
    "BRANDS", "FEATURES", "HEADPHONE_SLOTS", "Slot", "SlotSchema", "TYPES", "USE_CASES", "as_set",
    "catalog_values", "generate_headphones", "item_features", "item_slot_values", "item_type", "item_use_cases",
    "matching_items", "slot_entropy", "slot_match",
]
