"""``llmrec eval`` of a conversational spec (one with a ``state:`` block): simulated dialogues (book 8.4).

Each dialogue plays one simulated user (:mod:`llmrec.conversation.simulator`: a persona with hidden wants, a
budget, patience and noise, drawn so that some catalog item satisfies it) against the *whole spec*, in text: the
user opens with what it wants the headphones for, answers each clarifying question about the slot the spec asked
(``state.asked``; a question about no slot, such as a conflict, gets its whole wish list), and judges the items of
each recommendation in order, accepting the first whose hidden utility reaches its threshold, or saying "none of
these" so the spec must try again. It ends when the user accepts, runs out of patience, the spec ends the
conversation, or after ``max_turns``. Nothing of the persona reaches the spec but what the user says.

The spec must return ``action`` (ask | recommend | end) and ``items`` (the recommended items, each with an ``id``)
among its outputs, and keep its state (the runtime carries it from turn to turn exactly as ``llmrec serve``
does through a session). Reported, with 95% bootstrap intervals over the dialogues: task success rate, turns to
success, cumulative reward (the declarative reward of :mod:`llmrec.conversation.rewards`, per turn, summed),
share of users who left, questions per dialogue, degraded turns (no model configured), per-turn latency; and
the mean cumulative reward by turn, which the HTML report plots.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from ..conversation.catalog import HEADPHONE_SLOTS, SlotSchema, as_set
from ..conversation.rewards import Outcome, build_reward
from ..conversation.simulator import LLMUser, Persona, SimulatedUser, make_personas
from ..data.catalog import Catalog, Item
from ..errors import LlmrecError
from ..graph.build import Graph
from .stats import interval

#: what a simulated user says when it has no preference about the slot asked
NO_PREFERENCE = "no preference"
REJECT = "none of these, something else please"


class DialogueEvalError(LlmrecError):
    """A conversational evaluation that cannot run as asked (no state, outputs missing, no catalog)."""


@dataclass(frozen=True)
class DialogueSettings:
    dialogues: int = 50
    seed: int = 0
    max_turns: int = 8
    noise: float = 0.0
    reward: Mapping[str, Any] | None = None  # a reward config (llmrec/conversation/rewards.py); None: the default
    concurrency: int = 4


@dataclass
class Turn:
    said: str
    action: str
    slot: str | None
    items: list[str]
    accepted: str | None
    reward: float
    degraded: bool
    seconds: float
    explored: bool = False  # the spec's policy explored (a `decision` output whose `explored` is true)


@dataclass
class DialogueRecord:
    persona: dict[str, Any]
    success: bool = False
    left: bool = False
    ended_by_spec: bool = False
    turns: list[Turn] = field(default_factory=list)
    error: str | None = None
    oracle: float = 0.0  # the reward of recommending, at once, the item this user likes most (and accepting it)

    @property
    def reward(self) -> float:
        return sum(t.reward for t in self.turns)


def say(slot: str | None, value: Any) -> str:
    """What the user says about ``slot``: words the spec's understanding (rules or a model) can read."""
    if value is None or value == [] or value == frozenset():
        return NO_PREFERENCE
    if slot == "budget":
        return f"under ${float(value):.0f}"
    if slot == "use_case":
        values = sorted(as_set(value))
        return "for " + " and ".join(values)
    if isinstance(value, (set, frozenset, list, tuple)):
        return " and ".join(str(v).replace("_", " ") for v in sorted(value))
    return str(value).replace("_", " ")


def wish_list(persona: Persona) -> str:
    """Everything the persona wants, in one message (its answer to a question about no particular slot)."""
    parts = [say(slot, persona.value_of(slot)) for slot in ("type", "features", "use_case", "brand", "budget")
             if persona.value_of(slot) is not None]
    return "headphones " + ", ".join(parts) if parts else "just good headphones"


def opening(persona: Persona) -> str:
    """The first message: a shopper starts vague, with what the headphones are for when it knows."""
    use = persona.value_of("use_case")
    return f"I'm looking for headphones {say('use_case', use)}" if use else "I'm looking for headphones"


def _items(value: Any) -> list[str]:
    out = []
    for it in value or []:
        ident = it.get("id") if isinstance(it, Mapping) else getattr(it, "id", None)
        if ident is not None:
            out.append(str(ident))
    return out


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


async def play(runtime: Any, user: SimulatedUser, settings: DialogueSettings, reward: Any) -> DialogueRecord:
    """One simulated dialogue against ``runtime``'s spec."""
    persona, catalog = user.persona, user.catalog
    record = DialogueRecord(persona.to_dict())
    best = max(catalog, key=lambda it: (persona.utility(it), it.id), default=None)
    if best is not None:
        record.oracle = float(reward(Outcome(items=[best], wanted_features=as_set(persona.wants.get("features")),
                                             budget=persona.budget, accepted=True, turns=1)))
    takes_history = "history" in runtime.graph.spec.inputs
    message, state, history = opening(persona), None, []
    asked_before: list[str] = []
    for _ in range(settings.max_turns):
        inputs: dict[str, Any] = {"message": message}
        if takes_history:
            inputs["history"] = history
        start = time.perf_counter()
        try:
            result = await runtime.run(inputs, state=state)
        except LlmrecError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            return record
        seconds = time.perf_counter() - start
        outputs = result.outputs
        state = _dump(result.state)
        action = str(outputs.get("action") or "")
        asked = list((state or {}).get("asked") or [])
        slot = asked[-1] if action == "ask" and len(asked) > len(asked_before) else None
        asked_before = asked
        shown = _items(outputs.get("items")) if action == "recommend" else []
        user.turn += 1
        accepted: Item | None = None
        if shown:
            for ident in shown:
                item = catalog.get(ident)
                if item is not None and user.judge(item):
                    accepted = item
                    break
        if shown and runtime.learners:  # an online learner (policy.bandit) hears what the user did, as served
            await runtime.feedback([_feedback(result, accepted.id if accepted else shown[0],
                                              "purchase" if accepted else "dismissal",
                                              shown.index(accepted.id) + 1 if accepted else 1)])
        items = [catalog.get(i) for i in shown]
        outcome = Outcome(items=[i for i in items if i is not None], wanted_features=as_set(
            persona.wants.get("features")), budget=persona.budget, accepted=(accepted is not None) if shown else None,
            turns=1)
        decision = outputs.get("decision")
        explored = bool(decision.get("explored") if isinstance(decision, Mapping)
                        else getattr(decision, "explored", False))
        record.turns.append(Turn(message, action, slot, shown, accepted.id if accepted else None,
                                 float(reward(outcome)), bool(result.degraded), seconds, explored))
        history.append({"inputs": {"message": message},  # as llmrec serve keeps a session's turns
                        "outputs": to_jsonable_python(outputs, fallback=str)})
        if accepted is not None:
            user.accepted = accepted
            record.success = True
            return record
        if action == "end":
            record.ended_by_spec = True
            return record
        if user.left:
            record.left = True
            return record
        if action == "recommend":
            message = REJECT
        elif slot is not None:
            message = say(slot, await user.aanswer(slot))
        else:
            message = wish_list(persona)
    record.left = user.left
    return record


def _feedback(result: Any, item_id: str, kind: str, position: int) -> Any:
    from ..serve.logs import FeedbackEvent  # lazy: the feedback contract of llmrec serve, only for learners

    return FeedbackEvent(request_id=result.trace.run_id, item_id=item_id, type=kind, position=position)


def user_model(runtime: Any) -> Any:
    """The provider of the spec's first ``llm`` resource that has a model (None: none is configured, so the
    simulated users are rule-backed). An unconfigured ``llm`` resource's provider is named 'none'."""
    for name, built in runtime.graph.resources.items():
        value = runtime.resources.get(name)
        if built.spec.type == "llm" and callable(getattr(value, "complete", None)) \
                and getattr(value, "name", "none") != "none":
            return value
    return None


def _catalog_of(runtime: Any) -> Catalog:
    for value in runtime.resources.values():
        catalog = getattr(value, "catalog", None)
        if isinstance(catalog, Catalog):
            return catalog
        if isinstance(value, Catalog):
            return value
    raise DialogueEvalError("the spec has no dataset or catalog resource to draw simulated users from")


def check_spec(graph: Graph) -> None:
    """Refuse, with what to change, a spec that cannot be evaluated in dialogues."""
    if graph.state_model is None:
        raise DialogueEvalError(f"{graph.spec.name}: simulated dialogues need a spec that keeps state (a 'state:' "
                                "block); evaluate this one on a dataset instead")
    if "message" not in graph.spec.inputs:
        raise DialogueEvalError(f"{graph.spec.name}: simulated users speak through a 'message' input, which the "
                                "spec does not declare")
    missing = [name for name in ("action", "items") if name not in graph.spec.outputs]
    if missing:
        raise DialogueEvalError(f"{graph.spec.name}: add the output(s) {', '.join(missing)} (action: ask | "
                                "recommend | end; items: the recommended items with their ids)")


async def evaluate_dialogues(graph: Graph, settings: DialogueSettings = DialogueSettings(),
                             schema: SlotSchema = HEADPHONE_SLOTS,
                             resources: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Play ``settings.dialogues`` simulated users against ``graph``; the report (see :func:`summarize`).
    ``resources``: already-loaded values for some of the spec's resources (a provider for its ``llm``, say)."""
    from ..runtime.executor import Runtime  # lazy: the runtime only when an evaluation runs

    check_spec(graph)
    reward = build_reward(settings.reward)
    runtime = Runtime(graph, resources=dict(resources or {}))
    await runtime.start()
    try:
        catalog = _catalog_of(runtime)
        personas = make_personas(catalog, settings.dialogues, seed=settings.seed, noise=settings.noise)
        # a spec that learns online sees one dialogue at a time, in order: what it learned from one user is what
        # the next one meets (and the run is reproducible)
        at_once = 1 if runtime.learners else settings.concurrency
        gate = asyncio.Semaphore(at_once)

        provider = user_model(runtime)

        def user_for(p: Persona) -> SimulatedUser:
            if provider is not None:  # a model is configured: it answers the questions (acceptance stays hidden)
                return LLMUser(p, catalog, provider, seed=settings.seed, schema=schema)
            return SimulatedUser(p, catalog, seed=settings.seed, schema=schema)

        async def one(p: Persona) -> DialogueRecord:
            async with gate:
                return await play(runtime, user_for(p), settings, reward)

        records = await asyncio.gather(*(one(p) for p in personas))
    finally:
        await runtime.close()
    report = summarize(graph.spec.name, records, settings, "llm" if provider is not None else "rules")
    report["learners"] = runtime.learners
    report["settings"]["concurrency"] = at_once
    return report


def _with_interval(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "low": None, "high": None, "n": 0}
    lo, hi = interval(values)
    return {"mean": statistics.fmean(values), "low": lo, "high": hi, "n": len(values)}


def summarize(name: str, records: Sequence[DialogueRecord], settings: DialogueSettings,
              users: str = "rules") -> dict[str, Any]:
    ok = [r for r in records if r.error is None]
    wins = [r for r in ok if r.success]
    turns = [t for r in ok for t in r.turns]
    curve = []
    for i in range(settings.max_turns):  # mean cumulative reward after turn i (a finished dialogue keeps its sum)
        sums = [sum(t.reward for t in r.turns[: i + 1]) for r in ok]
        curve.append(statistics.fmean(sums) if sums else math.nan)
    blocks = max(1, min(5, len(ok)))  # success by fifths of the dialogues, in the order they were played
    size = math.ceil(len(ok) / blocks) if ok else 0
    by_block = [statistics.fmean(1.0 if r.success else 0.0 for r in ok[i:i + size])
                for i in range(0, len(ok), size)] if size else []
    latencies = sorted(t.seconds * 1000 for t in turns)
    return {
        "spec": name,
        "settings": {**asdict(settings), "reward": dict(settings.reward) if settings.reward else None},
        "dialogues": len(records),
        "failed": len(records) - len(ok),
        "errors": sorted({r.error for r in records if r.error})[:5],
        "success_rate": _with_interval([1.0 if r.success else 0.0 for r in ok]),
        "turns_to_success": _with_interval([float(len(r.turns)) for r in wins]),
        "cumulative_reward": _with_interval([r.reward for r in ok]),
        "left_rate": _with_interval([1.0 if r.left else 0.0 for r in ok]),
        "questions_per_dialogue": _with_interval([float(sum(t.action == "ask" for t in r.turns)) for r in ok]),
        "exploration_rate": (sum(t.explored for t in turns) / len(turns)) if turns else None,
        # regret: what an oracle (the user's favourite item, recommended at once) would have earned, minus what
        # the spec earned; summed over the dialogues in the order played (a learner's grows sub-linearly)
        "regret": _with_interval([r.oracle - r.reward for r in ok]),
        "cumulative_regret": list(itertools.accumulate(r.oracle - r.reward for r in ok)),
        "simulated_users": users,
        "degraded_turns": sum(t.degraded for t in turns),
        "turns": len(turns),
        "latency_ms": {"p50": latencies[len(latencies) // 2] if latencies else None,
                       "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None},
        "reward_curve": curve,
        "success_by_block": by_block,
        "records": [{**asdict(r), "reward": r.reward} for r in records],
    }


def _cell(stat: Mapping[str, Any], fmt: str = "{:.3f}") -> str:
    if stat.get("mean") is None:
        return "-"
    return f"{fmt.format(stat['mean'])} [{fmt.format(stat['low'])}, {fmt.format(stat['high'])}]"


def to_text(report: Mapping[str, Any]) -> str:
    """The report as the lines ``llmrec eval`` prints."""
    s = report["settings"]
    name = report.get("label") or report["spec"]
    lines = [f"{name}: {report['dialogues']} simulated dialogues (seed {s['seed']}, noise {s['noise']}, "
             f"at most {s['max_turns']} turns); 95% bootstrap intervals",
             f"  success rate            {_cell(report['success_rate'])}",
             f"  turns to success        {_cell(report['turns_to_success'], '{:.2f}')}",
             f"  cumulative reward       {_cell(report['cumulative_reward'])}",
             f"  users who left          {_cell(report['left_rate'])}",
             f"  questions per dialogue  {_cell(report['questions_per_dialogue'], '{:.2f}')}",
             f"  regret vs an oracle     {_cell(report['regret'])} per dialogue",
             f"  turn latency            p50 {report['latency_ms']['p50'] or 0:.1f} ms, "
             f"p99 {report['latency_ms']['p99'] or 0:.1f} ms ({s['concurrency']} dialogues at once)"]
    if report.get("exploration_rate"):
        lines.append(f"  exploring decisions     {report['exploration_rate']:.3f} of turns")
    lines.append(f"  simulated users         {report['simulated_users']}-backed")
    if report["degraded_turns"]:
        lines.append(f"  DEGRADED: {report['degraded_turns']} of {report['turns']} turns answered without a model "
                     "(rules, embeddings and templates); set LLMREC_MODEL to evaluate the spec with one")
    if report["failed"]:
        lines.append(f"  FAILED: {report['failed']} dialogues: {'; '.join(report['errors'])}")
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], folder: Path) -> dict[str, Path]:
    """report.json, report.md and a self-contained report.html with the reward curve, in ``folder``."""
    import base64
    import io

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "md": folder / "report.md", "html": folder / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    text = to_text(report)
    paths["md"].write_text(f"# {report['spec']}: simulated dialogues\n\n```\n{text}\n```\n", encoding="utf-8")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(range(1, len(report["reward_curve"]) + 1), report["reward_curve"], marker="o")
    ax.set_xlabel("turn")
    ax.set_ylabel("mean cumulative reward")
    ax.set_title(f"{report['spec']}: reward by turn ({report['dialogues']} dialogues)")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    (folder / "reward_curve.png").write_bytes(buf.getvalue())
    image = base64.b64encode(buf.getvalue()).decode("ascii")
    import html

    paths["html"].write_text(
        "<!doctype html><meta charset='utf-8'><title>" + html.escape(report["spec"]) + " dialogues</title>"
        "<body style='font-family:sans-serif;max-width:760px;margin:2em auto'>"
        f"<h1>{html.escape(report['spec'])}: simulated dialogues</h1><pre>{html.escape(text)}</pre>"
        f"<img alt='mean cumulative reward by turn' src='data:image/png;base64,{image}'></body>\n",
        encoding="utf-8")
    return paths


def parse_reward(text: str | None) -> dict[str, Any] | None:
    """``--reward`` for dialogues: a JSON object, or ``component=weight,...`` (feature_match=1,turn_penalty=0.1)."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DialogueEvalError(f"--reward is not valid JSON: {exc.msg} at column {exc.colno}") from None
        if not isinstance(value, dict):
            raise DialogueEvalError("--reward must be a JSON object of reward components")
        return value
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, weight = part.partition("=")
        try:
            out[name.strip()] = float(weight) if eq else 1.0
        except ValueError:
            raise DialogueEvalError(f"--reward: '{part}' is not component=weight") from None
    return out


def compare(reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every other report against the first (the spec as written), dialogue by dialogue (the same personas and
    seed): success and cumulative reward, paired bootstrap interval and randomization p, Holm-adjusted."""
    from .stats import holm, paired  # lazy: with the reports

    base = reports[0]
    found = []
    for other in reports[1:]:
        for metric, value in (("success", lambda r: 1.0 if r["success"] else 0.0), ("reward", lambda r: r["reward"])):
            a = [value(r) for r in other["records"]]
            b = [value(r) for r in base["records"]]
            if len(a) == len(b) and a:
                found.append(paired(metric, other["label"], a, base["label"], b))
    return [asdict(p) for p in holm(found)]


def run_command(targets: Sequence[tuple[str, Graph]], settings: DialogueSettings, *, json_path: str | None,
                report_dir: Path | None, out: Any, err: Any) -> None:
    """``llmrec eval`` in dialogues: every (label, graph) -- each spec and its variants -- played against the same
    simulated users; reports printed (or as JSON), compared with the first, and written with ``--report``."""
    from ..conversation.rewards import RewardConfigError  # lazy: with the rest of the simulation

    try:
        build_reward(settings.reward)
    except RewardConfigError as exc:
        raise DialogueEvalError(f"--reward: {exc}") from None
    for _, g in targets:
        check_spec(g)
    reports = []
    for label, g in targets:
        report = asyncio.run(evaluate_dialogues(g, settings))
        report["label"] = label
        reports.append(report)
    comparisons = compare(reports) if len(reports) > 1 else []
    if json_path is not None:
        data: Any = reports[0] if len(reports) == 1 else {"reports": reports, "comparisons": comparisons}
        text = json.dumps(data, indent=2, default=str)
        if json_path == "-":
            out(text)
        else:
            Path(json_path).write_text(text + "\n", encoding="utf-8")
    if json_path != "-":
        for report in reports:
            out(to_text(report))
        for c in comparisons:
            out(f"{c['a']} - {c['b']}: {c['metric']} {c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}], "
                f"p {c['p_adjusted']:.3f} (Holm)")
    if report_dir is not None:
        for report in reports:
            folder = report_dir if len(reports) == 1 else report_dir / report["label"]
            files = write_report(report, folder)
            err(f"report written: {files['md']}, {files['html']}")
