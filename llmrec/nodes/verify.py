"""Verification nodes: check what an LLM (or anything) produced before it reaches a user.

- ``verify.schema``: a value against a schema reference -> the parsed value, or an error (or a report);
- ``verify.grounded``: recommended ids/titles against the catalog -> hallucinations dropped or repaired by the
  closest title (difflib), duplicates dropped, every fix counted;
- ``verify.constraints``: declarative rules (budget, exclusions, already-seen, per-category quotas) plus your own
  ``check: file.py:function`` -> the value and its violations;
- ``verify.accept``: the last of several checks that ran (a repair loop's answer), or an error when it still
  breaks the rules, so the node's fallback takes over.

A repair loop in a spec (``llm.plan`` and ``llm.recommend`` take ``feedback``)::

    draft:   {type: llm.plan, inputs: {model: ..., constraints: ...}}
    check:   {type: verify.constraints, config: {budget: 500}, inputs: {value: "${draft}"}}
    repair:  {type: llm.plan, when: check.violations,
              inputs: {model: ..., constraints: ..., previous: "${draft}", feedback: "${check.violations}"}}
    recheck: {type: verify.constraints, when: check.violations, config: {budget: 500}, inputs: {value: "${repair}"}}
    final:   {type: verify.accept, inputs: {checks: ["${check}", "${recheck}"]}, fallback: {node: classic}}
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo

from ..data.catalog import Catalog
from ..errors import OutputValidationError, RunError
from ..hookspecs import hookimpl
from ..node import CheckContext, NodeType, OutputSchemaProblem, Problem, Reports, RunContext, Signature, read_signature
from ..schemas import SchemaRef, find_schema_file, import_schema_file, resolve_schema
from ..trust import check_module
from ..types import Candidates, Recommendation, Recommendations, ScoredItem, UserProfile
from .rerank import normalise_title


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use (issue 13)


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


# -- reading items out of values ---------------------------------------------------------------------------------


class Entry(_Value):
    """One item of a checked value, as the rules see it."""

    id: str | None = None
    title: str = ""
    category: str = ""
    price: float | None = None
    quantity: int = 1


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if value is not None:
            return value
    return None


def entries(value: Any, catalog: Catalog | None = None) -> list[Entry]:
    """The items of ``value``: Candidates, Recommendations, a plan (``items`` with ``item_id``/``name``/``price``/
    ``quantity``), a list of ids, or a Verified/Grounded wrapping one. Catalog facts win over the value's own."""
    if isinstance(value, (Verified, Accepted)):
        value = value.value
    if isinstance(value, Grounded):
        value = value.candidates
    if isinstance(value, Candidates):
        raw: list[Any] = [{"id": i} for i in value.ids]
    elif isinstance(value, (list, tuple)):
        raw = [{"id": v} if isinstance(v, str) else v for v in value]
    else:
        raw = list(_get(value, "items") or [])
    out = []
    for r in raw:
        item_id = _get(r, "item_id", "id")
        item_id = None if item_id is None else str(item_id)
        quantity = _get(r, "quantity")
        entry = Entry(id=item_id, title=str(_get(r, "title", "name") or ""), category=str(_get(r, "category") or ""),
                      price=_get(r, "price"), quantity=int(quantity) if quantity is not None else 1)
        known = catalog.get(item_id) if catalog is not None and item_id is not None else None
        if known is not None:  # the model cannot change a catalog item's price or category
            entry = entry.model_copy(update={"title": known.title, "category": known.category or entry.category,
                                             "price": known.price if known.price is not None else entry.price})
        out.append(entry)
    return out


# -- verify.schema -----------------------------------------------------------------------------------------------


class SchemaCheck(_Value):
    """What ``verify.schema`` returns with ``on_error: report``."""

    valid: bool
    value: Any = None
    errors: list[str] = Field(default_factory=list)


class SchemaConfig(_Config):
    schema_: SchemaRef = Field(alias="schema", description="'file.py:Model', 'package.module:Model' or 'file.json'.")
    on_error: Literal["raise", "report"] = Field(
        "raise", description="raise: an invalid value is an error (the node's fallback applies); report: return "
                             "{valid, value, errors}.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _schema_errors(value: Any, schema: type[BaseModel] | dict[str, Any]) -> tuple[Any, list[str]]:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(schema, dict):
        import jsonschema

        validator = jsonschema.Draft202012Validator(schema)
        errors = [("/".join(str(p) for p in e.absolute_path) + ": " if e.absolute_path else "") + e.message
                  for e in validator.iter_errors(value)]
        return (None if errors else value), errors
    try:
        if isinstance(value, (str, bytes)):
            return schema.model_validate_json(value), []
        return schema.model_validate(value), []
    except ValidationError as exc:
        return None, [(".".join(str(p) for p in e["loc"]) + ": " if e["loc"] else "") + e["msg"]
                      for e in exc.errors(include_url=False)]


class VerifySchema(NodeType):
    """Validate a value (a model, a dict, or JSON text) against a schema; the parsed value comes out."""

    name = "verify.schema"
    inline = True
    description = "Check a value against a schema (pydantic model or JSON Schema): the parsed value, or an error."
    Config = SchemaConfig

    def __init__(self, config: SchemaConfig) -> None:
        super().__init__(config)
        self._schema = resolve_schema(config.schema_, Path.cwd())

    @classmethod
    def signature(cls, config: SchemaConfig) -> Signature:  # type: ignore[override]
        base = read_signature(cls.run)
        if config.on_error == "report":
            output: Any = SchemaCheck
        else:
            schema = resolve_schema(config.schema_, Path.cwd())
            output = dict[str, Any] if isinstance(schema, dict) else schema
        return Signature(base.params, output, False, True)

    async def run(self, value: Any, context: RunContext | None = None) -> Any:
        parsed, errors = _schema_errors(value, self._schema)
        if self.config.on_error == "report":
            return SchemaCheck(valid=not errors, value=parsed, errors=errors)
        if errors:
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            raise OutputValidationError(f"value does not match schema: {'; '.join(errors[:3])}{more}",
                                        context.node_id if context else None)
        return parsed


# -- verify.grounded ---------------------------------------------------------------------------------------------


class Grounded(_Value):
    """Items checked against the catalog, with what was fixed: ``dropped``, ``repaired`` and ``duplicates`` are
    counts; ``fixes`` maps each repaired entry to the catalog id it became; ``dropped_entries`` lists the rest."""

    items: list[str] = Field(default_factory=list, description="Catalog ids, in the order given.")
    candidates: Candidates = Field(default_factory=Candidates)
    recommendations: Recommendations | None = None
    dropped: int = 0
    repaired: int = 0
    duplicates: int = 0
    fixes: dict[str, str] = Field(default_factory=dict)
    dropped_entries: list[str] = Field(default_factory=list)


class GroundedConfig(_Config):
    repair: bool = Field(True, description="Repair an unknown id or title by the closest catalog title.")
    cutoff: float = Field(0.8, ge=0.0, le=1.0, description="Least similarity (difflib ratio) for a repair.")


class _Titles:
    """Normalised catalog titles -> first id, built once per catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.ids: dict[str, str] = {}
        for item in catalog:
            self.ids.setdefault(normalise_title(item.title), item.id)
        self.keys = list(self.ids)

    def match(self, text: str, cutoff: float) -> str | None:
        key = normalise_title(text)
        if not key:
            return None
        if key in self.ids:
            return self.ids[key]
        close = difflib.get_close_matches(key, self.keys, n=1, cutoff=cutoff)
        return self.ids[close[0]] if close else None


class VerifyGrounded(NodeType):
    """Keep only items that exist in the catalog. An unknown entry (id, or title for Recommendations and lists of
    titles) is repaired to the catalog item whose title matches it best (normalised, then difflib) when
    ``repair`` is on and the match is close enough, else dropped; repeats are dropped. All counted."""

    name = "verify.grounded"
    inline = True
    description = "Check recommended items against the catalog: drop or repair hallucinations, drop duplicates."
    Config = GroundedConfig
    reports = Reports(grounding=True)

    def __init__(self, config: GroundedConfig) -> None:
        super().__init__(config)
        self._titles: dict[int, tuple[Catalog, _Titles]] = {}

    def _index(self, catalog: Catalog) -> _Titles:
        hit = self._titles.get(id(catalog))
        if hit is None or hit[0] is not catalog:
            if len(self._titles) >= 4:
                self._titles.clear()
            hit = self._titles[id(catalog)] = (catalog, _Titles(catalog))
        return hit[1]

    async def warm(self, catalog: Catalog | None = None, **_: Any) -> None:
        if catalog is not None:
            self._index(catalog)

    async def run(self, items: Candidates | Recommendations | list[str], catalog: Catalog) -> Grounded:
        cfg = self.config
        if isinstance(items, dict):  # a fallback literal
            items = (Recommendations if "user_id" in items else Candidates).model_validate(items)
        if isinstance(items, Candidates):
            rows: list[tuple[str, str, Any]] = [(c.id, c.id, c) for c in items.items]
        elif isinstance(items, Recommendations):
            rows = [(r.id, r.title, r) for r in items.items]
        elif isinstance(items, (list, tuple)):
            rows = [(str(v), str(v), None) for v in items]
        else:
            raise RunError(f"verify.grounded checks Candidates, Recommendations or a list of ids, not "
                           f"{type(items).__name__}")
        titles = self._index(catalog) if cfg.repair else None
        kept: list[tuple[str, Any]] = []
        seen: set[str] = set()
        fixes: dict[str, str] = {}
        dropped: list[str] = []
        duplicates = 0
        for item_id, title, original in rows:
            found = item_id if item_id in catalog else None
            if found is None and titles is not None:
                found = titles.match(title, cfg.cutoff) or (titles.match(item_id, cfg.cutoff) if title != item_id
                                                            else None)
                if found is not None:
                    fixes[item_id] = found
            if found is None:
                dropped.append(item_id)
                continue
            if found in seen:
                duplicates += 1
                continue
            seen.add(found)
            kept.append((found, original))
        ids = [i for i, _ in kept]
        scored = []
        for pos, (i, original) in enumerate(kept):
            if isinstance(original, ScoredItem):
                scored.append(original if original.id == i else original.model_copy(update={"id": i}))
            else:
                score = original.score if isinstance(original, Recommendation) else float(len(kept) - pos)
                scored.append(ScoredItem(id=i, score=score))
        recs = None
        if isinstance(items, Recommendations):
            fixed = []
            for rank, (i, original) in enumerate(kept, 1):
                item = catalog[i]
                update: dict[str, Any] = {"rank": rank}
                if original.id != i:
                    update.update(id=i, title=item.title, category=item.category, price=item.price)
                fixed.append(original.model_copy(update=update))
            recs = items.model_copy(update={"items": fixed})
        source = items.source if isinstance(items, Candidates) else "grounded"
        return Grounded(items=ids, candidates=Candidates(items=scored, source=source), recommendations=recs,
                        dropped=len(dropped), repaired=len(fixes), duplicates=duplicates, fixes=fixes,
                        dropped_entries=dropped)


# -- verify.constraints ------------------------------------------------------------------------------------------


class Violation(_Value):
    """One broken rule: which rule, a message a person (or a model re-asked with it) can act on, the item."""

    rule: str
    message: str
    item_id: str | None = None


class Verified(_Value):
    """A value and the rules it breaks (``violations`` is empty, and ``ok`` true, when it breaks none)."""

    value: Any = None
    ok: bool
    violations: list[Violation] = Field(default_factory=list)
    total: float | None = Field(None, description="Sum of price x quantity, when a budget was checked.")


def as_number(value: Any) -> float | None:
    """A numeric attribute as a float: numbers, and numeric text (CSV cells); else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _capacity(found: list[Entry], catalog: Catalog | None, attribute: str, room: float) -> list[Violation]:
    """Violations when the entries' ``attribute`` (from the catalog) x quantity adds up to more than ``room``."""
    used, unknown = 0.0, []
    for e in found:
        item = catalog.get(e.id) if catalog is not None and e.id is not None else None
        size = as_number(item.attributes.get(attribute)) if item is not None else None
        if size is not None:
            used += size * e.quantity
        else:
            unknown.append(e)
    out = [Violation(rule="capacity", item_id=e.id,
                     message=f"'{e.title or e.id}' has no known {attribute}, so it cannot be checked to fit")
           for e in unknown]
    if used > room + 1e-9:
        out.append(Violation(rule="capacity", message=f"the items need {round(used, 2):g} of {attribute}, more "
                                                      f"than the {room:g} available"))
    return out


def _resolve_check(ref: str, base_dir: Path | None) -> Callable[..., Any]:
    """``file.py:function`` (beside the spec) or ``package.module:function``; ``base_dir=None``: ``ref`` is the
    absolute reference validation made. Imports follow the trust rule (llmrec/trust.py)."""
    import importlib


    module_part, sep, attr = ref.strip().rpartition(":")
    if not sep or not module_part or not attr:
        raise ValueError(f"check '{ref}' must be 'file.py:function' or 'package.module:function'")
    if module_part.endswith(".py"):
        file = find_schema_file(module_part, base_dir or Path.cwd(), base_dir is not None)
        if file is None:
            raise ValueError(f"check module '{module_part}' not found beside the spec")
        try:
            module = import_schema_file(file)
        except OutputSchemaProblem as exc:
            raise ValueError(str(exc).replace("schema module", "check module")) from None
    else:
        check_module(module_part, base_dir)
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise ValueError(f"check module '{module_part}' cannot be imported: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        names = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise ValueError(f"check '{attr}' is not a function of '{module_part}'"
                         + (f" (it defines: {', '.join(names)})" if names else ""))
    return fn


def _absolute_check(value: str, info: ValidationInfo) -> str:
    base = Path((info.context or {}).get("base_dir") or Path.cwd())
    _resolve_check(value, base)  # fails validation with the reason
    module_part, _, attr = value.strip().rpartition(":")
    if module_part.endswith(".py"):
        file = find_schema_file(module_part, base, True)
        if file is not None:
            return f"{file.resolve()}:{attr}"
    return value.strip()


#: ``file.py:function`` or ``package.module:function``, resolved (and made absolute) when the spec is checked.
CheckRef = Annotated[str, AfterValidator(_absolute_check)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class ConstraintsConfig(_Config):
    budget: float | None = Field(None, ge=0, description="Sum of price x quantity may not exceed this.")
    unpriced: Literal["violation", "ignore"] = Field(
        "violation", description="With a budget: an item without a known price is a violation, or ignored.")
    exclude_ids: list[str] = Field(default_factory=list, description="Ids that may not appear.")
    no_seen: bool = Field(False, description="Items of the profile's history may not appear (needs 'profile').")
    max_per_category: int | None = Field(None, ge=1, description="At most this many items of one category.")
    capacity_attribute: str | None = Field(
        None, description="A numeric catalog attribute (e.g. 'footprint_m2') whose sum x quantity may not exceed "
                          "the 'capacity' input (or 'capacity' here): the items must fit.")
    capacity: float | None = Field(None, ge=0, description="The default capacity, when no 'capacity' input is given.")
    quotas: dict[str, int] = Field(default_factory=dict, description="Category -> most items of it.")
    check: Annotated[list[CheckRef], BeforeValidator(_as_list)] = Field(
        default_factory=list,
        description="Your rules: 'file.py:function' or 'package.module:function' (or a list), called as "
                    "fn(value, entries) and returning violation messages (or Violation objects).")


class VerifyConstraints(NodeType):
    """Check a value (a plan, Candidates, Recommendations or ids) against rules; the value comes out unchanged
    with its violations, so a spec can re-ask (``when: NODE.violations``), filter, or fall back."""

    name = "verify.constraints"
    inline = True
    description = "Check budget, exclusions, already-seen items, category quotas and your own rules; list violations."
    Config = ConstraintsConfig

    def __init__(self, config: ConstraintsConfig) -> None:
        super().__init__(config)
        self._checks = [(ref, _resolve_check(ref, None)) for ref in config.check]

    @classmethod
    def check(cls, config: ConstraintsConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        if config.no_seen and "profile" not in ctx.declared_inputs:
            return [Problem("'no_seen' needs the 'profile' input", "no_seen",
                            "Add profile: ${NODE} (a user.profile node) under 'inputs:'.")]
        return []

    async def run(self, value: Any, catalog: Catalog | None = None, profile: UserProfile | None = None,
                  budget: float | None = None, exclude: list[str] | None = None, capacity: float | None = None,
                  context: RunContext | None = None) -> Verified:
        cfg = self.config
        found = entries(value, catalog)
        out: list[Violation] = []
        room = cfg.capacity if capacity is None else capacity
        if cfg.capacity_attribute is not None and room is not None:
            out += _capacity(found, catalog, cfg.capacity_attribute, float(room))
        total = None
        limit = cfg.budget if budget is None else budget
        if limit is not None:
            total = 0.0
            for e in found:
                if e.price is None:
                    if cfg.unpriced == "violation":
                        out.append(Violation(rule="budget", item_id=e.id,
                                             message=f"'{e.title or e.id}' has no price, so the budget cannot be checked"))
                    continue
                total += e.price * e.quantity
            total = round(total, 2)
            if total > limit + 1e-9:
                out.append(Violation(rule="budget", message=f"the total {total:g} is over the budget of {limit:g}"))
        excluded = set(cfg.exclude_ids) | set(exclude or ())
        seen = set(profile.seen) if cfg.no_seen and profile is not None else set()
        for e in found:
            if e.id is not None and e.id in excluded:
                out.append(Violation(rule="exclusions", item_id=e.id, message=f"'{e.title or e.id}' is excluded"))
            if e.id is not None and e.id in seen:
                out.append(Violation(rule="already_seen", item_id=e.id,
                                     message=f"'{e.title or e.id}' was already seen by the user"))
        if cfg.max_per_category is not None or cfg.quotas:
            counts: dict[str, int] = {}
            for e in found:
                if e.category:
                    counts[e.category] = counts.get(e.category, 0) + 1
            for category, count in counts.items():
                most = cfg.quotas.get(category, cfg.max_per_category)
                if most is not None and count > most:
                    out.append(Violation(rule="quota", message=f"{count} items of category '{category}', at most "
                                                               f"{most} allowed"))
        for ref, fn in self._checks:
            try:
                result = fn(value, [e.model_dump() for e in found])
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                raise RunError(f"check '{ref}' failed: {type(exc).__name__}: {exc}",
                               context.node_id if context else None) from None
            for v in result or ():
                out.append(v if isinstance(v, Violation) else
                           Violation.model_validate(v) if isinstance(v, dict) else
                           Violation(rule=Path(ref.rpartition(":")[0]).stem + ":" + ref.rpartition(":")[2],
                                     message=str(v)))
        return Verified(value=value, ok=not out, violations=out, total=total)


# -- verify.accept -----------------------------------------------------------------------------------------------


class Accepted(_Value):
    """The value of the last check that ran, whether it passed, and how many tries it took."""

    value: Any = None
    ok: bool
    violations: list[Violation] = Field(default_factory=list)
    attempts: int = Field(description="How many of the checks ran (1: the first answer was checked only).")
    repaired: bool = Field(description="True when a later check (a repaired answer) was used.")


class AcceptConfig(_Config):
    on_failure: Literal["raise", "keep"] = Field(
        "raise", description="raise: the last answer still breaking rules is an error (the node's fallback "
                             "applies); keep: return it with ok=false.")


class VerifyAccept(NodeType):
    """The end of a repair loop: the last check that ran (skipped ones are null) decides."""

    name = "verify.accept"
    inline = True
    description = "End a repair loop: the last verification that ran, or an error (then the fallback) if it failed."
    Config = AcceptConfig

    async def run(self, checks: list[Verified | None], context: RunContext | None = None) -> Accepted:
        ran = [c if c is None or isinstance(c, Verified) else Verified.model_validate(c) for c in checks]
        ran = [c for c in ran if c is not None]
        if not ran:
            raise RunError("no check ran", context.node_id if context else None)
        last = ran[-1]
        if not last.ok and self.config.on_failure == "raise":
            shown = "; ".join(v.message for v in last.violations[:3])
            raise RunError(f"still breaks {len(last.violations)} rule{'s' if len(last.violations) != 1 else ''} "
                           f"after {len(ran)} attempt{'s' if len(ran) != 1 else ''}: {shown}",
                           context.node_id if context else None)
        return Accepted(value=last.value, ok=last.ok, violations=last.violations, attempts=len(ran),
                        repaired=len(ran) > 1)


NODE_TYPES = (VerifySchema, VerifyGrounded, VerifyConstraints, VerifyAccept)


@hookimpl
def llmrec_register_node_types(register: Any) -> None:
    for cls in NODE_TYPES:
        register(cls)


__all__ = ["Accepted", "Entry", "as_number", "Grounded", "NODE_TYPES", "SchemaCheck", "Verified", "VerifyAccept",
           "VerifyConstraints", "VerifyGrounded", "VerifySchema", "Violation", "entries"]
