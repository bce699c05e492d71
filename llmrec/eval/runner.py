"""Run specs over a dataset's test cases and score the answers: the engine of ``llmrec eval``.

For each spec: one :class:`~llmrec.runtime.executor.Runtime` (resources and indexes load once), one request
per test case, run concurrently under a semaphore. The dataset is handed to the spec's ``dataset`` resource
preloaded, so the spec learns from exactly the training split being scored and the data loads once for every
spec compared. A failing case is counted (and scored as an empty answer), never fatal.

Besides ranking and beyond-accuracy metrics, each spec gets LLM metrics from the traces (calls, tokens, cost,
cache hit and fallback rates), grounding violations of its answers (:mod:`llmrec.eval.llm_metrics`) and, with
a judge, LLM-as-judge scores (:mod:`llmrec.eval.judge`). With ``out``, every case is appended to a JSONL file
as it completes (:mod:`llmrec.eval.store`), and a rerun of the same evaluation reuses what is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from .. import progress as progress_
from ..api import validate
from ..data.dataset import Dataset, EvalCase
from ..errors import InputError, LlmrecError, SpecErrors
from ..graph.build import Graph
from ..runtime.batch import batching
from ..runtime.executor import WAVE, Runtime, load_resource
from ..spec.variants import validate_variant, variant_names
from .judge import EvalJudge, summarize_judge
from .llm_metrics import case_grounding, case_llm, llm_node_ids, summarize_grounding, summarize_llm
from .metrics import ListContext, higher_is_better, is_list_metric
from .report import MAX_FAILURE_MESSAGES, EvalReport, SpecResult
from ..provenance import dataset_digest
from ..serve.logs import provenance_stamp
from .stats import interval
from .store import CaseStore, cases_digest, fingerprint, slug

SpecLike = str | os.PathLike[str] | Any  # a path, a (path, variant) pair, or an already validated Graph


class EvalError(LlmrecError):
    """An evaluation that cannot be run as asked (no dataset, inputs the cases do not provide, ...)."""


class EvalInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`evaluate`. ``stores`` maps each per-case file the evaluation had opened (with
    ``out``) to the number of cases it holds: what the same evaluation run again reuses. Cases in flight when
    the interrupt came are never stored; they run again on resume."""

    def __init__(self, stores: Mapping[Path, int]) -> None:
        super().__init__()
        self.stores = dict(stores)

    @property
    def kept(self) -> int:
        return sum(self.stores.values())


@dataclass
class _CaseOutcome:
    ids: list[str]
    latency_ms: float
    error: str | None = None
    output: str | None = None
    metrics: dict[str, float] | None = None
    llm: dict[str, Any] | None = None
    grounding: dict[str, int] | None = None
    judge: dict[str, Any] | None = None
    provenance: str | None = None  # the id of the provenance stamp of what produced the answer

    def record(self, case_id: str, top: int) -> dict[str, Any]:
        return {"case": case_id, "ok": self.error is None, "latency_ms": round(self.latency_ms, 3),
                "ids": self.ids[:top], "metrics": self.metrics, "error": self.error, "output": self.output,
                "llm": self.llm, "grounding": self.grounding, "judge": self.judge, "provenance": self.provenance}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> _CaseOutcome:
        return cls(list(rec["ids"]), float(rec["latency_ms"]), rec.get("error"), rec.get("output"),
                   rec.get("metrics") or {}, rec.get("llm"), rec.get("grounding"), rec.get("judge"),
                   rec.get("provenance"))


def parse_ks(text: str) -> tuple[int, ...]:
    """``"5,10,20"`` -> (5, 10, 20); raises ValueError saying what is wrong."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("give at least one cutoff, e.g. 5,10,20")
    ks = []
    for p in parts:
        try:
            k = int(p)
        except ValueError:
            raise ValueError(f"'{p}' is not a whole number; write cutoffs like 5,10,20") from None
        if k < 1:
            raise ValueError(f"cutoffs must be at least 1, got {k}")
        ks.append(k)
    return tuple(sorted(set(ks)))


def answer_ids(value: Any) -> list[str] | None:
    """Item ids, best first, from an output value: Recommendations or Candidates (``.items[].id``), a list of
    id strings, or a list of items with an ``id``. None when the value is none of these."""
    items = getattr(value, "items", None)
    if isinstance(value, Mapping):
        items = value.get("items")
    elif callable(items):  # a plain dict's .items method: handled above
        items = None
    if items is None and isinstance(value, (list, tuple)):
        items = value
    if not isinstance(items, (list, tuple)):
        return None
    ids = []
    for it in items:
        if isinstance(it, str):
            ids.append(it)
        elif isinstance(it, Mapping) and isinstance(it.get("id"), str):
            ids.append(it["id"])
        elif isinstance(getattr(it, "id", None), str):
            ids.append(it.id)
        else:
            return None
    return ids


def dataset_resources(graph: Any) -> list[str]:
    """Names of the spec's resources whose type declares it provides a :class:`Dataset` (``provides``)."""
    names = []
    for name, res in graph.resources.items():
        provides = getattr(res.cls, "provides", None)
        if isinstance(provides, type) and issubclass(provides, Dataset):
            names.append(name)
    return names


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values, dtype=float)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "mean": float(arr.mean()),
        "max": float(arr.max()),
    }


def _select_metrics(registry: Any, wanted: Sequence[str] | None) -> dict[str, Callable[..., Any]]:
    table = registry.metrics
    if wanted is None:
        return {name: table[name] for name in table}
    chosen = {}
    for name in wanted:
        if name not in table:
            close = ", ".join(e.name for e in table.suggest(name))
            hint = f" (did you mean {close}?)" if close else ""
            raise EvalError(f"unknown metric '{name}'{hint}; registered metrics: {', '.join(table)}")
        chosen[name] = table[name]
    return chosen


@functools.lru_cache(maxsize=256)
def _takes_gains(fn: Callable[..., Any]) -> bool:
    try:
        return "gains" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def _case_metrics(
    metrics: Mapping[str, Callable[..., Any]], ids: list[str], case: EvalCase, ks: Sequence[int]
) -> dict[str, float]:
    out = {}
    for name, fn in metrics.items():
        if is_list_metric(fn):
            continue
        extra = {"gains": case.gains} if case.gains is not None and _takes_gains(fn) else {}
        for k in ks:
            out[f"{name}@{k}"] = float(fn(ids, case.relevant, k, **extra))
    return out


def _no_bar(n: float = 1) -> None:
    """advance() when no bar shows."""


@dataclass
class CaseAnswer:
    """What an engine gives back for one case: the spec's ``outputs`` (objects, or their JSON from another
    process) or the ``error`` message of a run that failed, the run's ``trace`` (a
    :class:`~llmrec.runtime.trace.Trace`, or None), and its latency."""

    outputs: Mapping[str, Any] | None
    error: str | None
    trace: Any
    latency_ms: float


@dataclass
class EvalJob:
    """What an engine needs to predict one column's cases: the target (graph, spec file, variant), the driver's
    started ``runtime``, the dataset scored on, the cutoffs (a spec that declares ``k`` gets ``max(ks)``), the
    requests in flight, the ``users`` limit and the provenance stamp of what produces the answers."""

    target: Any
    runtime: Any
    dataset: Dataset
    cases: Sequence[EvalCase]
    ks: tuple[int, ...]
    concurrency: int
    users: int | None
    stamp: Any
    #: resources handed in already loaded besides the dataset (``evaluate(resources=...)``): the driver's objects
    supplied: tuple[str, ...] = ()

    def request(self, case: EvalCase) -> dict[str, Any]:
        """The request a case sends to the spec."""
        return _request(case, self.target.graph.spec.inputs, self.ks)


#: called by an engine for each case it answered: (index in ``job.cases``, the case, its answer)
OnAnswer = Callable[[int, EvalCase, CaseAnswer], Awaitable[None]]


class CaseEngine(Protocol):
    """What predicts an evaluation's cases: :class:`LocalEngine` (this process, the default) or
    :class:`llmrec.distributed.eval_engine.RayEvalEngine`. Scoring, the per-case store, the judge and the report
    stay in :func:`evaluate`; an engine only runs the spec on each case of ``todo`` and awaits ``on_answer`` for
    each, in any order (a case it never answers is not stored and runs again on resume)."""

    name: str

    async def answers(self, job: EvalJob, todo: Sequence[tuple[int, EvalCase]], on_answer: OnAnswer) -> None: ...


class LocalEngine:
    """The cases run on the driver's Runtime, concurrently under a semaphore (a spec of inline nodes only in
    waves of ``WAVE``, each wave's calls to a batchable node batched together)."""

    name = "local"

    async def answers(self, job: EvalJob, todo: Sequence[tuple[int, EvalCase]], on_answer: OnAnswer) -> None:
        runtime = job.runtime
        # a spec of inline nodes only does no I/O: its cases run in waves of WAVE (below), all of a wave at once
        sem = asyncio.Semaphore(max(job.concurrency, WAVE) if runtime.inline_only else job.concurrency)

        async def one(i: int, case: EvalCase) -> None:
            async with sem:
                t0 = time.perf_counter()
                try:
                    result = await runtime.run(job.request(case))
                    outputs, error, trace = result.outputs, None, result.trace
                except Exception as exc:  # one failing case must not stop the evaluation
                    outputs, error = None, (str(exc) or type(exc).__name__)
                    trace = getattr(exc, "trace", None)
                await on_answer(i, case, CaseAnswer(outputs, error, trace, (time.perf_counter() - t0) * 1000))

        with batching():
            if runtime.inline_only:
                # no I/O: the cases run in waves, each wave's calls to a batchable node batched together
                for start in range(0, len(todo), WAVE):
                    await asyncio.gather(*(one(i, case) for i, case in todo[start:start + WAVE]))
            else:
                await asyncio.gather(*(one(i, case) for i, case in todo))


class TracedEngine:
    """Another engine whose every case's run becomes OpenTelemetry spans (``llmrec eval --otel``): a ``run SPEC``
    span per case (attributes ``llmrec.eval.case``, ``llmrec.variant``) with a span per node, built from the run's
    trace by :meth:`llmrec.telemetry.Tracing.record_run`, children of ``context`` (e.g. ``$TRACEPARENT``'s)."""

    def __init__(self, inner: CaseEngine, tracing: Any, context: Any = None) -> None:
        self.inner, self.tracing, self.context = inner, tracing, context
        self.name = inner.name

    async def answers(self, job: EvalJob, todo: Sequence[tuple[int, EvalCase]], on_answer: OnAnswer) -> None:
        async def traced(i: int, case: EvalCase, answer: CaseAnswer) -> None:
            if answer.trace is not None:
                self.tracing.record_run(answer.trace, context=self.context,
                                        attributes={"llmrec.eval.case": case.id, "llmrec.variant": job.target.variant},
                                        error=RuntimeError(answer.error) if answer.error is not None else None)
            await on_answer(i, case, answer)

        await self.inner.answers(job, todo, traced)


@dataclass
class _Target:
    """One column of the comparison: a graph, the file it came from and the variant applied (if any)."""

    graph: Any
    path: str | None
    variant: str | None = None

    @property
    def label(self) -> str:
        if self.variant is None:
            return self.graph.name
        base = Path(self.path).name if self.path else self.graph.name
        return f"{base}[{self.variant}]"


def _targets(specs: Sequence[SpecLike], variants: bool | Sequence[str] | None) -> list[_Target]:
    """Validate every spec (and variant) before anything runs; SpecErrors lists every problem."""
    out: list[_Target] = []
    errors = []
    for s in specs:
        variant = None
        if isinstance(s, tuple):
            s, variant = s
        try:
            if isinstance(s, Graph):
                graph, path = s, None
            elif variant is not None:
                graph, path = validate_variant(s, variant, str(s)), str(s)
            else:
                graph, path = validate(s, str(s)), str(s)
        except SpecErrors as exc:
            errors.extend(exc.errors)
            continue
        out.append(_Target(graph, path, variant))
        if variant is not None or not variants:
            continue
        declared = variant_names(graph.document)
        chosen = declared if variants is True else list(variants)
        unknown = [v for v in chosen if v not in declared]
        if unknown:
            raise EvalError(f"spec '{graph.name}' has no variant {', '.join(repr(v) for v in unknown)} "
                            f"(declared: {', '.join(declared) or 'none'})")
        file = path if path is not None else graph.document.path
        for v in chosen:
            try:
                out.append(_Target(validate_variant(file, v, path), path, v))
            except SpecErrors as exc:
                errors.extend(exc.errors)
    if errors:
        raise SpecErrors(errors)
    return out


async def aevaluate(
    specs: Sequence[SpecLike],
    dataset: Dataset | None = None,
    *,
    ks: Sequence[int] = (5, 10, 20),
    users: int | None = None,
    concurrency: int = 8,
    output: str | None = None,
    progress: bool = True,
    results_path: str | os.PathLike[str] | None = None,
    metrics: Sequence[str] | None = None,
    item_vectors: Mapping[str, Sequence[float]] | None = None,
    variants: bool | Sequence[str] | None = None,
    judge: Any = None,
    judge_rubric: Mapping[str, str] | None = None,
    judge_reason: str | None = None,
    judge_spec: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    fresh: bool = False,
    log: Callable[[str], None] | None = None,
    resources: Mapping[str, Any] | None = None,
    stores: list[Any] | None = None,
    engine: CaseEngine | None = None,
) -> EvalReport:
    """:func:`evaluate`, for code already inside an event loop; ``stores`` (a list) receives each spec's
    :class:`~llmrec.eval.store.CaseStore` as it is opened."""
    ks = tuple(sorted(set(ks)))
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be whole numbers of at least 1, got {list(ks)}")
    if users is not None and users < 1:
        raise ValueError(f"users must be at least 1, got {users}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    targets = _targets(specs, variants)
    opened = judge is not None and not isinstance(judge, EvalJudge)
    if judge is True:  # the judge spec's own model
        evaluator = await EvalJudge.open(spec=judge_spec, criteria=judge_rubric)
    elif isinstance(judge, str):
        evaluator = await EvalJudge.open(spec=judge_spec, model=judge, criteria=judge_rubric)
    elif opened:  # a provider object: the judge spec's `model` resource
        evaluator = await EvalJudge.open(spec=judge_spec, provider=judge, criteria=judge_rubric)
    else:
        evaluator = judge
    loaded: dict[str, Dataset] = {}  # a spec's own dataset, by resource type and config: loaded once
    results = []
    handle: IO[str] | None = None
    if results_path is not None:
        Path(results_path).parent.mkdir(parents=True, exist_ok=True)
        handle = open(results_path, "a", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        for target in targets:
            try:
                results.append(await _evaluate_spec(
                    target, dataset, loaded, ks=ks, users=users, concurrency=concurrency, output=output,
                    show_progress=progress, handle=handle, metric_names=metrics, item_vectors=item_vectors,
                    judge=evaluator, judge_reason=judge_reason, out=Path(out) if out is not None else None,
                    fresh=fresh, log=log, resources=resources, stores=stores, engine=engine,
                ))
            except (EvalError, SpecErrors):
                raise  # the evaluation as asked cannot run: nothing is compared
            except LlmrecError as exc:  # this column cannot start (a model that is not there): the others run
                if log is not None:
                    log(f"{target.label}: not evaluated: {exc}")
                results.append(SpecResult(
                    spec=target.graph.name, path=target.path, dataset=dataset.name if dataset is not None else "",
                    split=dataset.split if dataset is not None else "", n_cases=0, metrics={}, latency_ms={},
                    variant=target.variant, label=target.label, not_run=str(exc)))
    finally:
        if handle is not None:
            handle.close()
        if opened and evaluator is not None:  # a judge opened here, not one handed in
            await evaluator.close()
    return EvalReport(results, ks)


def evaluate(
    specs: Sequence[SpecLike],
    dataset: Dataset | None = None,
    *,
    ks: Sequence[int] = (5, 10, 20),
    users: int | None = None,
    concurrency: int = 8,
    output: str | None = None,
    progress: bool = True,
    results_path: str | os.PathLike[str] | None = None,
    metrics: Sequence[str] | None = None,
    item_vectors: Mapping[str, Sequence[float]] | None = None,
    variants: bool | Sequence[str] | None = None,
    judge: Any = None,
    judge_rubric: Mapping[str, str] | None = None,
    judge_reason: str | None = None,
    judge_spec: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    fresh: bool = False,
    log: Callable[[str], None] | None = None,
    resources: Mapping[str, Any] | None = None,
    engine: CaseEngine | None = None,
) -> EvalReport:
    """Run every spec over ``dataset``'s test cases and score the answers at each k.

    ``specs`` are paths (validated here; :class:`~llmrec.errors.SpecErrors` if invalid), ``(path, variant)``
    pairs or Graphs. ``variants`` adds each path's declared variants (True: all; or a list of names) as columns
    of their own. With no ``dataset``, each spec's own ``dataset`` resource is loaded (once per distinct
    config). ``users`` takes the first N test cases; ``output`` names the output holding the answer (default:
    the first that is Recommendations, Candidates or a list of ids); ``results_path`` appends one JSON line per
    case; ``metrics`` restricts the registered metrics by name; ``item_vectors`` (id -> vector) makes
    intra-list diversity use cosine distance instead of categories.

    ``judge`` (a model name, a provider, True for the judge spec's own model, or an opened
    :class:`~llmrec.eval.judge.EvalJudge`) scores every answer
    by running the judge spec (``judge_spec``, default ``llmrec/eval/judge.yaml``: ``llm.judge``) with that model
    and ``judge_rubric`` as its criteria (default :data:`~llmrec.eval.judge.DEFAULT_RUBRIC`); without one the
    report says so (``judge_reason``). ``out`` (a folder) persists each case as it completes and resumes from
    what an earlier identical run left there (``fresh`` discards it); ``log`` receives one-line notices.
    ``resources`` hands already-built values (a provider, a test double) to specs that declare a resource of
    that name. ``engine`` runs the spec on the cases (default :class:`LocalEngine`: this process;
    :class:`~llmrec.distributed.eval_engine.RayEvalEngine`: a Ray actor pool); everything else is the same, so a
    store one engine began another resumes.

    Ctrl-C raises :class:`EvalInterrupted` (a KeyboardInterrupt) saying how many cases each per-case file keeps;
    the same call again resumes from them, and its report equals an uninterrupted run's (docs/evaluation.md).
    """
    stores: list[Any] = []
    try:
        return asyncio.run(aevaluate(
            specs, dataset, ks=ks, users=users, concurrency=concurrency, output=output, progress=progress,
            results_path=results_path, metrics=metrics, item_vectors=item_vectors, variants=variants, judge=judge,
            judge_rubric=judge_rubric, judge_reason=judge_reason, judge_spec=judge_spec, out=out, fresh=fresh,
            log=log, resources=resources, stores=stores, engine=engine,
        ))
    except KeyboardInterrupt as exc:
        if isinstance(exc, EvalInterrupted):
            raise
        raise EvalInterrupted({store.path: store.count for store in stores}) from exc


async def _spec_dataset(graph: Any, dataset: Dataset | None, loaded: dict[str, Dataset]) -> tuple[
        Dataset, dict[str, Any], list[str]]:
    """The dataset to score on, the resources to preload, and warnings."""
    names = dataset_resources(graph)
    if len(names) > 1:
        raise EvalError(f"spec '{graph.name}' declares {len(names)} dataset resources ({', '.join(names)}); "
                        "eval needs exactly one to know what to score against")
    if dataset is not None:
        if not names:
            return dataset, {}, [
                f"it has no dataset resource, so it does not learn from the training split of "
                f"'{dataset.name}' it is scored on (held-out answers may be in what it reads)"]
        return dataset, {names[0]: dataset}, []
    if not names:
        raise EvalError(f"spec '{graph.name}' has no dataset resource to take test cases from; "
                        "pass --dataset NAME (e.g. movielens-100k, demo) or add a resource of type 'dataset'")
    res = graph.resources[names[0]]
    key = json.dumps([res.cls.name, res.config.model_dump(mode="json")], sort_keys=True, default=str)
    if key not in loaded:
        value = await load_resource(graph, names[0])
        if not isinstance(value, Dataset):  # pragma: no cover - a resource type lying about `provides`
            raise EvalError(f"resource '{names[0]}' of spec '{graph.name}' gave a {type(value).__name__}, "
                            "not a Dataset")
        loaded[key] = value
    return loaded[key], {names[0]: loaded[key]}, []


def _request(case: EvalCase, declared: Mapping[str, Any], ks: Sequence[int]) -> dict[str, Any]:
    request = {name: value for name, value in case.inputs.items() if name in declared}
    if "k" in declared:
        request["k"] = max(ks)
    return request


async def _evaluate_spec(
    target: _Target,
    dataset: Dataset | None,
    loaded: dict[str, Dataset],
    *,
    ks: tuple[int, ...],
    users: int | None,
    concurrency: int,
    output: str | None,
    show_progress: bool,
    handle: IO[str] | None,
    metric_names: Sequence[str] | None,
    item_vectors: Mapping[str, Sequence[float]] | None,
    judge: Any,
    judge_reason: str | None,
    out: Path | None,
    fresh: bool,
    log: Callable[[str], None] | None,
    resources: Mapping[str, Any] | None,
    stores: list[Any] | None = None,
    engine: CaseEngine | None = None,
) -> SpecResult:
    graph, path, label = target.graph, target.path, target.label
    name = graph.name
    metrics = _select_metrics(graph.registry, metric_names)
    if output is not None and output not in graph.outputs:
        raise EvalError(f"spec '{name}' has no output '{output}'; its outputs are: {', '.join(graph.outputs)}")
    ds, preset, warnings = await _spec_dataset(graph, dataset, loaded)
    cases = ds.test_cases[:users] if users is not None else ds.test_cases
    if not cases:
        raise EvalError(f"dataset '{ds.name}' (split '{ds.split}') has no test cases to evaluate; "
                        "choose a split that holds some out, e.g. --split temporal")
    declared = graph.spec.inputs
    supplied = {k: v for k, v in (resources or {}).items() if k in graph.resources and k not in preset}
    runtime = Runtime(graph, resources={**preset, **supplied})
    try:
        runtime.validate_inputs(_request(cases[0], declared, ks))
    except InputError as exc:
        given = ", ".join(sorted(cases[0].inputs)) or "nothing"
        raise EvalError(f"spec '{name}' cannot take the test cases of dataset '{ds.name}': {exc} "
                        f"(the cases give: {given}; with k = {max(ks)} when the spec declares 'k')") from None
    top = max(ks)
    llm_nodes = llm_node_ids(graph)
    outcomes: list[_CaseOutcome | None] = [None] * len(cases)
    store = None
    reused = 0
    # the provenance stamp (the one `llmrec serve` puts on its answers) of what produces this column's answers:
    # the runtime starts first, since it may train an artifact on first use, which changes the stamp
    try:
        await runtime.start()
        stamp = provenance_stamp(graph, dict(runtime.resources))
    except BaseException:
        await runtime.close()
        raise
    if out is not None:
        # keyed on what produced the results, so a case computed before a fix, a retrain or a data change is
        # never reused
        fp = fingerprint({"spec": graph.document.data, "variant": target.variant, "dataset": ds.name,
                          "split": ds.split, "cases": cases_digest(cases), "ks": list(ks), "users": users,
                          "output": output, "metrics": sorted(metrics),
                          "judge": judge.key() if judge is not None else None,
                          "provenance": stamp.id, "data": dataset_digest(ds)})
        store = CaseStore(out / f"{slug(label)}-{fp[:12]}.jsonl",
                          {"fingerprint": fp, "spec": name, "path": path, "variant": target.variant,
                           "dataset": ds.name, "split": ds.split, "ks": list(ks), "users": users,
                           "provenance": stamp.id})
        if fresh:
            store.reset()
        done_before = store.load()
        if stores is not None:
            stores.append(store)
        for i, case in enumerate(cases):
            rec = done_before.get(case.id)
            if rec is not None:
                outcomes[i] = _CaseOutcome.from_record(rec)
                reused += 1
        if log is not None and reused:
            log(f"{label}: resumed {reused} of {len(cases)} cases from {store.path} (--fresh to start over)")
    names = list(graph.outputs)
    history: dict[str, frozenset[str]] = {}

    def seen_of(case: EvalCase) -> frozenset[str]:
        user = case.inputs.get("user_id")
        if not isinstance(user, str):
            return case.exclude
        if user not in history:
            history[user] = ds.train.seen(user)
        return history[user]

    async def scored(i: int, case: EvalCase, answer: CaseAnswer) -> None:
        raw: list[str] = []
        used = None
        error = answer.error
        if answer.outputs is not None:
            for out_name in [output] if output is not None else names:
                found = answer_ids(answer.outputs.get(out_name))
                if found is not None:
                    raw, used = found, out_name
                    break
            else:
                what = (f"output '{output}' is a {type(answer.outputs.get(output)).__name__}"
                        if output is not None else f"no output ({', '.join(names)}) is")
                error = f"{what}, not Recommendations, Candidates or a list of ids; name one with --output"
        # exclusion happens in the spec; stripped here too (and duplicates dropped) so it can never count
        ids = [r for r in dict.fromkeys(raw) if r not in case.exclude]
        judged = None
        if judge is not None and error is None:
            user = case.inputs.get("user_id")
            past = [it.item_id for it in ds.train.history(user)] if isinstance(user, str) else []
            judged = await judge.score(ids, ds.catalog, past)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Ctrl-C came while this case ran and something on the way turned the cancellation into an error
            # or an answer (a fallback, a judge failure): never keep that; the case runs again on resume
            raise asyncio.CancelledError
        # the top `top` ids, as stored: a case computed now and one read back from the store are the same
        outcome = _CaseOutcome(ids[:top], answer.latency_ms, error, used, _case_metrics(metrics, ids, case, ks),
                               case_llm(answer.trace, llm_nodes), case_grounding(raw, ds.catalog, seen_of(case)),
                               judged, stamp.id)
        outcomes[i] = outcome
        if store is not None:
            store.write(outcome.record(case.id, top))
        if handle is not None:
            record = {"spec": label, "dataset": ds.name, "split": ds.split, **outcome.record(case.id, top)}
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            handle.flush()
        advance()

    started = time.perf_counter()
    todo = [(i, case) for i, case in enumerate(cases) if outcomes[i] is None]
    job = EvalJob(target, runtime, ds, cases, ks, concurrency, users, stamp, tuple(supplied))
    shown = progress_.step(f"evaluating {label}", len(cases)) if show_progress else contextlib.nullcontext(_no_bar)
    with shown as advance:
        if reused:
            advance(reused)
        try:
            if todo:
                await (engine if engine is not None else LocalEngine()).answers(job, todo, scored)
        finally:
            if store is not None:
                store.close()
            await runtime.close()
    wall = time.perf_counter() - started
    done = [o for o in outcomes if o is not None]
    sums: dict[str, float] = {}
    for o in done:
        for key, value in (o.metrics or {}).items():
            sums[key] = sums.get(key, 0.0) + value
    scores = {key: total / len(done) for key, total in sums.items()}
    context = ListContext(catalog=ds.catalog, train=ds.train,
                          item_vectors=item_vectors if item_vectors is not None else ds.extra.get("item_vectors"))
    lists = [o.ids for o in done]
    for metric_name, fn in metrics.items():
        if is_list_metric(fn):
            for k in ks:
                value = fn(lists, k, context)
                scores[f"{metric_name}@{k}"] = float("nan") if value is None else float(value)
    scored = [(case, o) for case, o in zip(cases, outcomes) if o is not None]
    case_values = {key: [(o.metrics or {}).get(key, 0.0) for _, o in scored] for key in sums}
    failed = [(case, o) for case, o in scored if o.error is not None]
    used_outputs = [o.output for o in done if o.output is not None]
    empty_llm = case_llm(None, llm_nodes)
    return SpecResult(
        spec=name,
        path=path,
        dataset=ds.name,
        split=ds.split,
        n_cases=len(cases),
        metrics=scores,
        latency_ms=_percentiles([o.latency_ms for o in done]),
        failures=len(failed),
        failure_messages=[f"{case.id}: {o.error}" for case, o in failed[:MAX_FAILURE_MESSAGES]],
        output=output if output is not None else (min(used_outputs, key=names.index) if used_outputs else None),
        wall_s=wall,
        lower_is_better=frozenset(n for n, fn in metrics.items() if not higher_is_better(fn)),
        warnings=warnings,
        variant=target.variant,
        label=label,
        llm=summarize_llm([o.llm or empty_llm for o in done], len(llm_nodes)),
        grounding=summarize_grounding([o.grounding or case_grounding([], ds.catalog, ()) for o in done]),
        judge=summarize_judge([o.judge for o in done], judge, judge_reason),
        reused=reused,
        store=str(store.path) if store is not None else None,
        latencies=[o.latency_ms for o in done if o.latency_ms is not None],
        case_ids=[case.id for case, _ in scored],
        case_values=case_values,
        answers=[o.ids for _, o in scored],
        qrels={case.id: dict(case.gains) if case.gains is not None else dict.fromkeys(sorted(case.relevant), 1.0)
               for case, _ in scored},
        intervals={key: interval(values) for key, values in case_values.items()},
        protocol=_protocol(ds, [case for case, _ in scored], [o.ids for _, o in scored], ks, case_values),
        provenance=stamp.to_dict(),
    )


def _protocol(ds: Dataset, cases: Sequence[EvalCase], answers: Sequence[list[str]], ks: Sequence[int],
              case_values: Mapping[str, list[float]]) -> dict[str, Any]:
    """What a reader of the report must know to trust it: how the cases were made (the dataset's own words),
    how many used the fallback relevance rule or have nothing relevant, cutoffs longer than the answers, items
    no spec trained on the interactions can recommend, and how many cases score 0."""
    out: dict[str, Any] = dict(ds.extra.get("protocol") or {"split": ds.split})
    n = len(cases)
    out["cases"] = n
    out["relevance_fallback_cases"] = sum(1 for c in cases if c.relevance_fallback)
    out["no_relevant_cases"] = sum(1 for c in cases if not c.relevant)
    out["no_relevant_treatment"] = ("kept in every mean: they score 0 on precision, recall and NDCG, so no spec "
                                    "can reach 1.0")
    out["short_answers"] = {str(k): sum(1 for ids in answers if len(ids) < k) for k in ks}
    if len(ds.train):
        trained = set(ds.train.popularity())
        catalog = set(ds.catalog.ids)
        recommended = {i for ids in answers for i in ids[:max(ks)]}
        out["items"] = len(catalog)
        out["items_without_training_interactions"] = len(catalog - trained)
        out["coverage_of_recommendable"] = (len(recommended & trained) / len(trained)) if trained else None
    out["zero_cases"] = {key: sum(1 for v in values if v == 0.0) for key, values in case_values.items()}
    return out


__all__ = ["CaseAnswer", "CaseEngine", "EvalError", "EvalInterrupted", "EvalJob", "LocalEngine", "OnAnswer",
           "TracedEngine", "aevaluate", "answer_ids", "dataset_resources", "evaluate", "parse_ks"]
