"""A small, seeded, synthetic shop: catalog, users with planted tastes, and their interaction logs.

The planted structure is what makes the dataset useful for testing recommenders: every user has 1-3 preferred
categories and a price band that most of their interactions follow, and items have a Zipf-like latent popularity,
so both personalised and popularity baselines have something real to find. Only ``random.Random(seed)`` is used,
so a seed always reproduces the same data.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import json
import math
import os
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Generic, TypeVar

from llmrec.data.catalog import Catalog, EventType, Interaction, Interactions, Item
from llmrec.data.dataset import Dataset
from llmrec.data.datasets import DatasetInfo
from llmrec.data.splits import make_dataset

T = TypeVar("T")

START_TIMESTAMP = 1_700_000_000
SPAN_SECONDS = 180 * 24 * 3600
PREFERRED_SHARE = 0.8
ZIPF_EXPONENT = 1.5
CATEGORY_ZIPF_EXPONENT = 0.8


@dataclass(frozen=True)
class DemoUser:
    """A synthetic user and the tastes planted in their interactions."""

    id: str
    preferred_categories: tuple[str, ...]
    price_band: tuple[float, float]


@dataclass(frozen=True)
class DemoDataset:
    """The generated catalog, the interaction log and the ground-truth users behind it."""

    catalog: Catalog
    interactions: Interactions
    users: list[DemoUser]


@dataclass(frozen=True)
class _Category:
    brands: tuple[str, ...]
    adjectives: tuple[str, ...]
    #: (noun, lowest price, highest price): the noun decides the price range, so espresso machines cost more
    #: than cutting boards.
    nouns: tuple[tuple[str, float, float], ...]
    #: Category-specific selling points; two per item. Keywords such as "hiking" or "espresso" appear only in
    #: their own category, so keyword search lands in the right place.
    sentences: tuple[str, ...]

    @property
    def price_range(self) -> tuple[float, float]:
        return min(lo for _, lo, _ in self.nouns), max(hi for _, _, hi in self.nouns)


_CATEGORIES: dict[str, _Category] = {
    "books": _Category(
        brands=("Inkwell", "Quillstone", "Lantern House", "Paperleaf", "Folio & Finch", "Harborlight",
                "Marginalia", "Bookend Press"),
        adjectives=("Illustrated", "Annotated", "Unabridged", "Collected", "Deluxe", "Pocket", "Award-Winning",
                    "Bestselling"),
        nouns=(("Mystery Novel", 6.99, 24.0), ("Fantasy Novel", 7.99, 29.0), ("Historical Novel", 7.99, 27.0),
               ("Graphic Novel", 12.0, 40.0), ("Cookbook", 14.0, 45.0), ("Biography", 11.0, 35.0),
               ("Poetry Collection", 4.99, 22.0), ("Travel Guide", 9.0, 30.0)),
        sentences=("A page-turning read that is hard to put down once the first chapter hooks you.",
                   "Readers praise the author's vivid, literary prose.",
                   "Printed on acid-free paper with a sewn binding that survives years of rereading.",
                   "A bestseller that book clubs keep coming back to.",
                   "Includes an author interview and discussion questions for reading groups.",
                   "Perfect for a quiet evening of reading by the window."),
    ),
    "music": _Category(
        brands=("Echo Grove", "Vinyl Vault", "Bluebird Records", "Resonance", "Harmonia", "Fretworks",
                "Soundpost", "Cadence"),
        adjectives=("Signature", "Heritage", "Limited Edition", "Vintage", "Classic", "Studio", "Collector's",
                    "Anniversary"),
        nouns=(("Vinyl Record", 18.0, 60.0), ("Jazz Album", 9.99, 35.0), ("Concert Ukulele", 39.0, 220.0),
               ("Acoustic Guitar", 129.0, 899.0), ("Guitar Strings Set", 6.99, 25.0), ("Cajon Drum", 59.0, 260.0),
               ("Blues Harmonica", 14.0, 90.0), ("Sheet Music Songbook", 9.0, 35.0)),
        sentences=("Warm, rich tone that rewards beginners and seasoned musicians alike.",
                   "Pressed on heavyweight vinyl for a quieter, deeper listen.",
                   "Recorded live in a legendary studio with a full band.",
                   "Spans jazz, folk and blues favourites on one album.",
                   "Comes with a tuning guide and a practice songbook for musicians.",
                   "A must for record collectors and anyone who loves live music."),
    ),
    "games": _Category(
        brands=("Meeple & Co", "Pixelforge", "Dicebound", "Nebula Play", "Tabletop Titans", "Questline",
                "Arcadia", "Boardwalk Games"),
        adjectives=("Strategic", "Co-op", "Family", "Deluxe", "Legendary", "Cosmic", "Tactical", "Retro"),
        nouns=(("Board Game", 19.99, 79.0), ("Card Game", 9.99, 29.0), ("Party Game", 14.99, 39.0),
               ("Jigsaw Puzzle", 12.0, 35.0), ("Video Game", 19.99, 69.99), ("Dice Collection", 9.99, 45.0),
               ("Miniatures Expansion", 24.0, 89.0), ("Escape Room Kit", 19.0, 49.0)),
        sentences=("Supports two to six players in fast multiplayer rounds.",
                   "Easy to learn in ten minutes, deep enough for years of game nights.",
                   "Every session plays out differently thanks to modular tiles and hidden roles.",
                   "Online multiplayer and couch co-op modes keep friends coming back.",
                   "Beautifully illustrated cards and sturdy tokens in a compact box.",
                   "A crowd-pleaser for family game night and competitive players alike."),
    ),
    "outdoor": _Category(
        brands=("Trailblazer", "Summit Ridge", "Northwind", "Pinecrest", "Basecamp", "Alpine Fox", "Riverstone",
                "Wildtrail"),
        adjectives=("Waterproof", "Ultralight", "Insulated", "Rugged", "All-Season", "Packable", "Windproof",
                    "Expedition"),
        nouns=(("Hiking Boots", 69.0, 280.0), ("Camping Tent", 89.0, 650.0), ("Sleeping Bag", 49.0, 320.0),
               ("Trekking Poles", 24.0, 140.0), ("Hiking Backpack", 45.0, 260.0), ("Headlamp", 14.0, 90.0),
               ("Camp Stove", 29.0, 160.0), ("Rain Jacket", 59.0, 340.0)),
        sentences=("Built for long hiking days on rough, rocky trails.",
                   "Packs down small for weekend camping and backpacking trips.",
                   "Seam-sealed to stay dry through mountain storms.",
                   "Trusted by hiking guides and thru-hikers alike.",
                   "Light enough for summit pushes, tough enough for base camp.",
                   "Ready for alpine trails, forest campsites and everything in between."),
    ),
    "kitchen": _Category(
        brands=("Copperpot", "Brewmaster", "Chef's Table", "Saltgrain", "Hearthstone Kitchen", "Crema",
                "Oak & Olive", "Ladle Lane"),
        adjectives=("Professional", "Stainless", "Nonstick", "Artisan", "Compact", "Heavy-Duty", "Precision",
                    "Ceramic"),
        nouns=(("Espresso Machine", 129.0, 899.0), ("Chef's Knife", 24.0, 180.0), ("Cast Iron Skillet", 19.0, 120.0),
               ("Pour-Over Kettle", 25.0, 140.0), ("Stand Mixer", 149.0, 650.0), ("Cutting Board", 12.0, 80.0),
               ("Burr Coffee Grinder", 39.0, 260.0), ("Dutch Oven", 39.0, 320.0)),
        sentences=("Made for home baristas who want cafe-quality espresso every morning.",
                   "Heats evenly for perfect searing, braising and baking.",
                   "Dishwasher-safe parts make cleanup after cooking quick.",
                   "A favourite of home cooks, from espresso lovers to weekend bakers.",
                   "Balanced, ergonomic design that makes everyday cooking a pleasure.",
                   "Built from restaurant-grade materials that last for decades of recipes."),
    ),
    "fitness": _Category(
        brands=("Ironclad", "FlexFit", "Pulse Athletics", "Corestrong", "Zenflow", "Stride Lab", "Kettlebell Co",
                "Peak Form"),
        adjectives=("Adjustable", "Non-Slip", "Pro", "Compact", "Premium", "Eco", "Heavy-Duty", "Training"),
        nouns=(("Yoga Mat", 19.0, 120.0), ("Dumbbell Set", 49.0, 450.0), ("Resistance Bands", 12.0, 49.0),
               ("Kettlebell", 24.0, 160.0), ("Foam Roller", 14.0, 59.0), ("Jump Rope", 9.0, 39.0),
               ("Exercise Bike", 199.0, 700.0), ("Yoga Block Set", 12.0, 35.0)),
        sentences=("Designed for home workouts, from yoga flows to strength circuits.",
                   "A dense, grippy surface protects joints during every workout.",
                   "A staple of gym routines for building strength and mobility.",
                   "Pairs perfectly with a morning yoga or stretching session.",
                   "Track your progress as cardio and strength improve week after week.",
                   "Trusted by personal trainers for HIIT, pilates and yoga classes."),
    ),
    "electronics": _Category(
        brands=("Voltix", "Auralite", "Nimbus Tech", "Circuitry", "Lumen", "Quantum Audio", "Pixelwave", "Ampere"),
        adjectives=("Wireless", "Smart", "Portable", "Ultra-Slim", "Fast-Charging", "Compact", "Pro", "Next-Gen"),
        nouns=(("Over-Ear Headphones", 49.0, 399.0), ("Noise-Cancelling Headphones", 79.0, 449.0),
               ("Bluetooth Speaker", 25.0, 299.0), ("Smartwatch", 79.0, 449.0), ("Tablet", 129.0, 899.0),
               ("Power Bank", 19.0, 89.0), ("4K Webcam", 39.0, 199.0), ("Mechanical Keyboard", 49.0, 229.0)),
        sentences=("Pairs instantly over Bluetooth 5.3 with phones and laptops.",
                   "All-day battery life with USB-C fast charging.",
                   "Connect your favourite headphones or speakers without a single cable.",
                   "Firmware updates over Wi-Fi keep the gadget getting better.",
                   "Low-latency audio tuned for calls, streaming and headphones listening.",
                   "A sleek aluminium body that slips into any laptop bag."),
    ),
    "home": _Category(
        brands=("Hearth & Home", "Linen Loft", "Maple Nook", "Willow Lane", "Cozy Cabin", "Ember & Ash",
                "Driftwood", "Nest"),
        adjectives=("Handwoven", "Scandinavian", "Rustic", "Modern", "Velvet", "Minimalist", "Farmhouse",
                    "Boho"),
        nouns=(("Throw Blanket", 24.0, 140.0), ("Scented Candle", 12.0, 48.0), ("Table Lamp", 29.0, 220.0),
               ("Accent Chair", 149.0, 600.0), ("Wall Mirror", 39.0, 260.0), ("Area Rug", 59.0, 480.0),
               ("Ceramic Vase", 18.0, 90.0), ("Linen Curtains", 29.0, 160.0)),
        sentences=("Adds warmth and texture to any living room or bedroom.",
                   "Pairs beautifully with a cozy sofa and soft evening light.",
                   "Crafted from natural materials for a calm, uncluttered home.",
                   "An easy way to refresh your decor without a full renovation.",
                   "Looks just as good in a city apartment as in a country cottage.",
                   "Brings the reading nook, sofa corner or entryway together."),
    ),
}

_COLORS = ("black", "white", "slate grey", "forest green", "navy", "crimson", "sand", "teal", "charcoal", "ivory")

# Price bands as fractions of a category's log-price range: budget shoppers sit low, premium shoppers high.
_PRICE_TIERS: tuple[tuple[float, float], ...] = ((0.0, 0.55), (0.25, 0.8), (0.45, 1.0))

# Preferred-category items get more committed events and kinder ratings, which is what makes tastes learnable.
_EVENTS: tuple[EventType, ...] = ("view", "click", "purchase", "rating")
_STARS = (1, 2, 3, 4, 5)
_EVENT_WEIGHTS_PREFERRED = (0.45, 0.25, 0.15, 0.15)
_EVENT_WEIGHTS_OTHER = (0.6, 0.25, 0.05, 0.1)
_RATING_WEIGHTS_PREFERRED = (0.02, 0.05, 0.18, 0.40, 0.35)
_RATING_WEIGHTS_OTHER = (0.15, 0.25, 0.30, 0.20, 0.10)


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _price(rng: random.Random, lo: float, hi: float) -> float:
    """Log-uniform in [lo, hi] with .99 charm pricing, as shops actually price things."""
    raw = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    charm = round(math.floor(raw) + 0.99, 2)
    return charm if lo <= charm <= hi else round(min(max(raw, lo), hi), 2)


def _titles(rng: random.Random, spec: _Category, count: int) -> list[tuple[str, str, tuple[str, float, float], str]]:
    """``count`` distinct (brand, adjective, noun, edition suffix) picks; numbered once combinations run out."""
    combos = [(b, a, n) for b in spec.brands for a in spec.adjectives for n in spec.nouns]
    rng.shuffle(combos)
    picks = []
    for i in range(count):
        brand, adjective, noun = combos[i % len(combos)]
        edition = i // len(combos)
        picks.append((brand, adjective, noun, f" No. {edition + 1}" if edition else ""))
    return picks


def _make_catalog(rng: random.Random, n_items: int) -> tuple[list[Item], dict[str, float]]:
    """The items and each item's latent popularity weight."""
    names = list(_CATEGORIES)
    # Balanced category sizes, shuffled so ids do not reveal the category.
    assigned = [names[i % len(names)] for i in range(n_items)]
    rng.shuffle(assigned)
    width = len(str(n_items))
    counts = {name: assigned.count(name) for name in names}
    triples = {name: iter(_titles(rng, _CATEGORIES[name], counts[name])) for name in names}

    items: list[Item] = []
    for index, category in enumerate(assigned, start=1):
        spec = _CATEGORIES[category]
        brand, adjective, (noun, lo, hi), edition = next(triples[category])
        first, second = rng.sample(spec.sentences, 2)
        items.append(
            Item(
                id=f"i{index:0{width}d}",
                title=f"{brand} {adjective} {noun}{edition}",
                description=f"{adjective} {noun.lower()} by {brand}. {first} {second}",
                category=category,
                price=_price(rng, lo, hi),
                attributes={
                    "brand": brand,
                    "color": rng.choice(_COLORS),
                    "rating": round(min(5.0, max(1.0, rng.gauss(4.0, 0.6))), 1),
                    "in_stock": rng.random() < 0.9,
                },
            )
        )

    # Zipf-like latent popularity within each category: a few hits, a long tail.
    popularity: dict[str, float] = {}
    for category in names:
        members = [item.id for item in items if item.category == category]
        rng.shuffle(members)
        for rank, item_id in enumerate(members, start=1):
            popularity[item_id] = 1.0 / rank**ZIPF_EXPONENT
    return items, popularity


def _weighted_order(rng: random.Random, population: Sequence[T], weight: Callable[[T], float]) -> list[T]:
    """A weighted random permutation (Efraimidis-Spirakis): heavier members tend to come first.

    Any prefix of it is a weighted sample without replacement.
    """
    # log(u) / w orders the same way as u ** (1 / w) without underflowing for small weights.
    keyed = [(math.log(1.0 - rng.random()) / weight(member), member) for member in population]
    keyed.sort(key=lambda pair: pair[0], reverse=True)
    return [member for _, member in keyed]


class _Queue:
    """Items in a fixed order, handed out one at a time, skipping those the user has already seen."""

    def __init__(self, items: list[Item]) -> None:
        self._items = items
        self._next = 0

    def next_unseen(self, seen: set[str]) -> Item | None:
        while self._next < len(self._items):
            item = self._items[self._next]
            self._next += 1
            if item.id not in seen:
                return item
        return None


class _Draw(Generic[T]):
    """Weighted draws from a fixed population with precomputed cumulative weights, O(log n) each."""

    def __init__(self, values: Sequence[T], weights: Sequence[float]) -> None:
        self._values = list(values)
        self._cumulative = list(itertools.accumulate(weights))

    def __call__(self, rng: random.Random) -> T:
        index = bisect.bisect_right(self._cumulative, rng.random() * self._cumulative[-1])
        # Float rounding can land exactly on the total; clamp rather than index past the end.
        return self._values[min(index, len(self._values) - 1)]


def _draw_unseen(
    rng: random.Random, draw: _Draw[Item], items: Sequence[Item], weight: Callable[[Item], float], seen: set[str]
) -> Item:
    """One popularity-weighted item the user has not seen; callers guarantee one exists."""
    # Users see a small fraction of the catalog, so rejection almost always succeeds within a few tries and
    # avoids re-sorting the whole catalog per user; the fallback only matters for tiny catalogs.
    for _ in range(32):
        item = draw(rng)
        if item.id not in seen:
            return item
    return _weighted_order(rng, [it for it in items if it.id not in seen], weight)[0]


def _price_band(rng: random.Random, preferred: Sequence[str]) -> tuple[float, float]:
    low_frac, high_frac = rng.choice(_PRICE_TIERS)
    lows, highs = [], []
    for category in preferred:
        lo, hi = _CATEGORIES[category].price_range
        span = math.log(hi) - math.log(lo)
        lows.append(math.exp(math.log(lo) + low_frac * span))
        highs.append(math.exp(math.log(lo) + high_frac * span))
    return round(min(lows), 2), round(max(highs), 2)


def generate_demo(seed: int = 7, n_items: int = 300, n_users: int = 120) -> DemoDataset:
    """Generate the demo dataset; the same arguments always give the same data.

    Users ``u1..uN`` each have 1-3 preferred categories and a price band. About 80% of a user's 10-60
    interactions fall in those categories (inside the band while such items remain), the rest anywhere; within
    either pool, items with higher latent popularity are picked more often. A user never sees an item twice.
    """
    _check_positive("n_items", n_items)
    _check_positive("n_users", n_users)
    rng = random.Random(seed)
    items, latent = _make_catalog(rng, n_items)
    catalog = Catalog(items)
    present = catalog.categories
    # Some categories are simply more popular than others, which is part of what global popularity reflects.
    ranked = rng.sample(present, len(present))
    category_weight = {cat: 1.0 / rank**CATEGORY_ZIPF_EXPONENT for rank, cat in enumerate(ranked, start=1)}


    def popularity(item: Item) -> float:
        return latent[item.id]

    anywhere = _Draw(items, [popularity(item) for item in items])
    preferred_event = _Draw(_EVENTS, _EVENT_WEIGHTS_PREFERRED)
    other_event = _Draw(_EVENTS, _EVENT_WEIGHTS_OTHER)
    preferred_stars = _Draw(_STARS, _RATING_WEIGHTS_PREFERRED)
    other_stars = _Draw(_STARS, _RATING_WEIGHTS_OTHER)

    users: list[DemoUser] = []
    events: list[Interaction] = []
    for number in range(1, n_users + 1):
        user_id = f"u{number}"
        n_preferred = rng.randint(1, min(3, len(present)))
        preferred = tuple(sorted(_weighted_order(rng, present, category_weight.__getitem__)[:n_preferred]))
        low, high = _price_band(rng, preferred)
        users.append(DemoUser(id=user_id, preferred_categories=preferred, price_band=(low, high)))

        in_band: list[Item] = []
        out_of_band: list[Item] = []
        for category in preferred:
            for it in catalog.by_category(category):
                (in_band if it.price is not None and low <= it.price <= high else out_of_band).append(it)
        # Falling back to out-of-band preferred items keeps the category signal when the band runs dry.
        taste = _Queue(_weighted_order(rng, in_band, popularity) + _weighted_order(rng, out_of_band, popularity))
        seen: set[str] = set()

        count = min(rng.randint(10, 60), n_items)
        for offset in sorted(rng.sample(range(SPAN_SECONDS), count)):
            item = taste.next_unseen(seen) if rng.random() < PREFERRED_SHARE else None
            if item is None:
                item = _draw_unseen(rng, anywhere, items, popularity, seen)
            seen.add(item.id)
            liked = item.category in preferred
            event = (preferred_event if liked else other_event)(rng)
            rating = float((preferred_stars if liked else other_stars)(rng)) if event == "rating" else None
            events.append(
                Interaction(user_id=user_id, item_id=item.id, event=event, rating=rating,
                            timestamp=START_TIMESTAMP + offset)
            )

    return DemoDataset(catalog=catalog, interactions=Interactions(events), users=users)


def _atomic_write(path: Path, write: Callable[[IO[str]], None]) -> None:
    """Write via a temporary file in the same directory and rename, so readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_demo(
    directory: str | os.PathLike[str], seed: int = 7, n_items: int = 300, n_users: int = 120
) -> dict[str, Path]:
    """Generate the demo dataset and write it to ``directory`` (created if missing).

    Writes ``catalog.jsonl`` (one Item per line), ``interactions.csv`` (header
    ``user_id,item_id,event,rating,timestamp``, empty rating cell when there is none) and ``users.jsonl``.
    Returns the paths keyed ``catalog``, ``interactions`` and ``users``.
    """
    dataset = generate_demo(seed=seed, n_items=n_items, n_users=n_users)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "catalog": root / "catalog.jsonl",
        "interactions": root / "interactions.csv",
        "users": root / "users.jsonl",
    }

    def write_catalog(handle: IO[str]) -> None:
        for item in dataset.catalog:
            handle.write(item.model_dump_json() + "\n")

    def write_interactions(handle: IO[str]) -> None:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["user_id", "item_id", "event", "rating", "timestamp"])
        for it in dataset.interactions:
            writer.writerow([it.user_id, it.item_id, it.event, "" if it.rating is None else it.rating, it.timestamp])

    def write_users(handle: IO[str]) -> None:
        for user in dataset.users:
            record = {
                "id": user.id,
                "preferred_categories": list(user.preferred_categories),
                "price_band": list(user.price_band),
            }
            handle.write(json.dumps(record) + "\n")

    _atomic_write(paths["catalog"], write_catalog)
    _atomic_write(paths["interactions"], write_interactions)
    _atomic_write(paths["users"], write_users)
    return paths


def _load_demo(root: Path, *, split: str = "none", seed: int = 0, test_fraction: float | None = None,
               n_items: int = 300, n_users: int = 120, relevant_rating: float | None = 4.0,
               holdout_fraction: float = 0.2) -> Dataset:
    """The demo shop generated with ``seed``, split by ``split``; ``extra["users"]``: its planted users."""
    demo = generate_demo(seed=seed, n_items=n_items, n_users=n_users)
    ds = make_dataset("demo", demo.catalog, demo.interactions, split,  # type: ignore[arg-type]
                      test_fraction=test_fraction, holdout_fraction=holdout_fraction, seed=seed,
                      relevant_rating=relevant_rating, description=DEMO.description)
    ds.extra["users"] = demo.users
    return ds


DEMO = DatasetInfo(
    "demo",
    "The seeded demo shop (llmrec.data.demo), generated in memory: 300 items, 120 users.",
    _load_demo,
)
DATASETS: tuple[DatasetInfo, ...] = (DEMO,)
