"""``plan.greedy``: a plan from a catalog under a budget and a capacity, without an LLM.

The classic branch behind ``llm.plan`` (its fallback, or the baseline it is judged against): for each wanted
category in order, the best-rated item that still fits the money and the room left. Same output type as
``llm.plan`` with the default schema, so either can feed the same verification and presentation nodes.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..data import Catalog, Item
from ..hookspecs import hookimpl
from ..node import NoConfig, NodeType
from .llm_tasks import Plan, PlanItem
from .verify import as_number


class GreedyPlanConfig(NoConfig):
    capacity_attribute: str | None = Field(
        None, description="A numeric catalog attribute (e.g. 'footprint_m2') that must fit the 'capacity' input.")
    score_attribute: str | None = Field(
        None, description="A numeric catalog attribute to prefer (e.g. 'rating'); ties and no score: lower price.")
    per_category: int = Field(1, ge=1, le=20, description="Items picked at most per wanted category.")


def _number(item: Item, name: str | None) -> float | None:
    return as_number(item.attributes.get(name)) if name else None


class GreedyPlan(NodeType):
    """Pick, for each wanted category in order, the best items that fit the remaining budget and capacity."""

    name = "plan.greedy"
    inline = True
    description = "Plan items from a catalog within a budget and a capacity, greedily by category (no LLM)."
    Config = GreedyPlanConfig

    async def run(self, catalog: Catalog, budget: float, goals: list[str] | None = None,
                  capacity: float | None = None) -> Plan:
        cfg = self.config
        wanted = list(dict.fromkeys(goals or sorted({i.category for i in catalog if i.category})))
        money, room = float(budget), None if capacity is None else float(capacity)
        items: list[PlanItem] = []
        skipped: list[str] = []
        for category in wanted:
            pool = [i for i in catalog if i.category.casefold() == category.casefold() and i.price is not None]
            pool.sort(key=lambda i: (-(_number(i, cfg.score_attribute) or 0.0), i.price, i.id))
            picked = 0
            for item in pool:
                size = _number(item, cfg.capacity_attribute)
                if cfg.capacity_attribute and size is None:
                    continue  # cannot be shown to fit
                if item.price > money + 1e-9 or (room is not None and size is not None and size > room + 1e-9):
                    continue
                items.append(PlanItem(name=item.title, item_id=item.id, category=item.category, price=item.price))
                money -= item.price
                if room is not None and size is not None:
                    room -= size
                picked += 1
                if picked >= cfg.per_category:
                    break
            if not picked:
                skipped.append(category)
        steps = [f"Set up the {it.name} ({it.category})." for it in items]
        spent = round(float(budget) - money, 2)
        notes = f"Chosen greedily by category (no LLM): total {spent:g} of a {float(budget):g} budget"
        if room is not None and capacity is not None:
            notes += f", {round(float(capacity) - room, 2):g} of {float(capacity):g} {cfg.capacity_attribute} used"
        notes += "." + (f" Nothing fits for: {', '.join(skipped)}." if skipped else "")
        return Plan(steps=steps, items=items, notes=notes)


@hookimpl
def llmrec_register_node_types(register: Any) -> None:
    register(GreedyPlan)


__all__ = ["GreedyPlan"]
