"""``llmrec eval SPEC --engine ray``: an evaluation's cases predicted by a Ray actor pool.

    llmrec eval specs/movielens_cf.yaml --engine ray --workers 4
    llmrec eval specs/movielens_cf.yaml --engine ray --address auto

Only the *prediction* moves (the :class:`~llmrec.eval.runner.CaseEngine` seam of :func:`llmrec.eval.runner.evaluate`):
the driver loads the dataset, opens the per-case store, skips the cases it already holds, and cuts the rest into
batches of cases in dataset order; Ray Data's ``map_batches`` runs them over a pool of :class:`EvalWorker` actors
(:func:`llmrec.distributed.engine.map_in_order`), each of which builds the spec's Runtime once and loads the
dataset itself, from the spec's own dataset resource or from what ``--dataset`` loaded on the driver (the same
name, split and seed). Before running anything each worker checks that its test cases and its provenance stamp
are the driver's (otherwise its answers would score against other cases), and says which differs. The answers
(outputs as JSON, the error message of a failed case, the trace) stream back in order, and the driver scores,
judges and stores them exactly as for the local engine: the report's metrics are identical, and a store begun by
one engine is resumed by the other.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..data.dataset import EvalCase
from ..eval.runner import CaseAnswer, EvalError, EvalJob, OnAnswer, dataset_resources
from ..eval.store import cases_digest
from ..runtime.trace import ModelUsage, NodeRecord, Trace

#: cases per batch (what one actor runs at once, through ``Runtime.run_many``)
DEFAULT_EVAL_BATCH = 64


def trace_to_json(trace: Trace | None) -> dict[str, Any] | None:
    """A run's trace as JSON-compatible data, unrounded (:meth:`Trace.to_dict` rounds times and costs for display;
    the driver sums costs and tokens, so they travel exact)."""
    return None if trace is None else asdict(trace)


def trace_from_json(data: Mapping[str, Any] | None) -> Trace | None:
    """:func:`trace_to_json`'s data as a :class:`Trace` again."""
    if data is None:
        return None
    nodes = []
    for rec in data.get("nodes", ()):
        fields = dict(rec)
        usage = fields.pop("usage", None)
        nodes.append(NodeRecord(**fields, usage=ModelUsage(**usage) if usage is not None else None))
    return Trace(data["run_id"], data["spec"], data["started_at"], data.get("wall_ms", 0.0), nodes)


class EvalWorker:
    """Predicts an evaluation's cases on a Ray actor: the spec (or its variant) validated and its Runtime started
    once, in ``__init__``, with the dataset the driver scores on: ``dataset`` (load options of ``--dataset``:
    name, split, seed) or else the spec's own dataset resource. Refuses to start when its test cases or its
    provenance stamp are not the driver's (``digest``, ``stamp``)."""

    def __init__(self, spec: str, variant: str | None, trust: bool, dataset: Mapping[str, Any] | None,
                 n_cases: int, digest: str, stamp: str, concurrency: int) -> None:
        from ..api import validate  # lazy: the checker, once a worker starts
        from ..data.datasets import load_dataset  # lazy: the loaders, once a worker starts
        from ..runtime.executor import Runtime  # lazy: the runtime, once a worker starts
        from ..serve.logs import provenance_stamp  # lazy: hashing, once a worker starts
        from ..spec.variants import validate_variant  # lazy: the checker, once a worker starts
        from ..trust import grant  # lazy: once a worker starts

        if trust:
            grant(Path(spec).resolve().parent)
        graph = validate_variant(spec, variant, spec) if variant is not None else validate(spec, spec, trust=trust)
        names = dataset_resources(graph)
        preset: dict[str, Any] = {}
        if dataset is not None and names:
            preset[names[0]] = load_dataset(dataset["name"], registry=graph.registry,
                                            **{k: v for k, v in dataset.items() if k != "name"})
        self.runtime = Runtime(graph, resources=preset)
        self.concurrency = concurrency
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.runtime.start())
        resources = dict(self.runtime.resources)
        if names:
            cases = resources[names[0]].test_cases[:n_cases]
            if cases_digest(cases) != digest:
                raise EvalError(f"this worker's test cases of '{names[0]}' are not the driver's ({len(cases)} cases; "
                                "the dataset's files, split or seed differ on this node)")
        mine = provenance_stamp(graph, resources).id
        if mine != stamp:
            raise EvalError(f"this worker's provenance stamp {mine[:12]} is not the driver's {stamp[:12]}: the spec, "
                            "its files, artifacts, plugins, llmrec version or data differ on this node")

    def run(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One answer per item (``{"i", "request"}``), in order: outputs as JSON or the error, and the trace."""
        from pydantic_core import to_jsonable_python

        results = self.loop.run_until_complete(
            self.runtime.run_many([item["request"] for item in items], concurrency=self.concurrency))
        answers = []
        for item, result in zip(items, results):
            if isinstance(result, Exception):
                trace = getattr(result, "trace", None)
                answers.append({"i": item["i"], "outputs": None, "error": str(result) or type(result).__name__,
                                "trace": trace_to_json(trace), "latency_ms": trace.wall_ms if trace else 0.0})
            else:
                answers.append({"i": item["i"], "outputs": to_jsonable_python(result.outputs), "error": None,
                                "trace": trace_to_json(result.trace), "latency_ms": result.trace.wall_ms})
        return answers

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Ray Data's ``map_batches`` call: ``group`` JSON texts (each a batch of cases) in, an ``answer`` JSON text
        per case out."""
        import numpy as np

        answers = [a for text in batch["group"] for a in self.run(json.loads(text))]
        return {"i": np.asarray([a["i"] for a in answers], dtype=np.int64),
                "answer": np.asarray([json.dumps(a, ensure_ascii=False) for a in answers], dtype=object)}


class RayEvalEngine:
    """The :class:`~llmrec.eval.runner.CaseEngine` of ``--engine ray``: a pool of :class:`EvalWorker` actors on the
    Ray at ``address`` (or one started here with ``num_cpus``), ``workers`` of them (default: one per CPU, never
    more than batches), ``batch_size`` cases a batch. ``dataset``: ``--dataset``'s load options (``name`` and the
    ``split``/``seed`` given), for the workers to load what the driver loaded; None: the spec's own resource."""

    name = "ray"

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None, workers: int | None = None,
                 batch_size: int = DEFAULT_EVAL_BATCH, dataset: Mapping[str, Any] | None = None, trust: bool = False,
                 progress: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.address, self.num_cpus, self.workers = address, num_cpus, workers
        self.batch_size, self.dataset, self.trust, self.progress = batch_size, dataset, trust, progress
        self.used_workers: int | None = None  # the pool size of the last column evaluated

    def connect(self) -> Any:
        """Ray, connected (:func:`llmrec.distributed.engine.connect`): call it before anything is written, so that
        a cluster that cannot be reached is an :class:`~llmrec.distributed.engine.EngineError` at once."""
        from .engine import connect  # lazy: Ray, only with --engine ray

        return connect(self.address, self.num_cpus)

    async def answers(self, job: EvalJob, todo: Sequence[tuple[int, EvalCase]], on_answer: OnAnswer) -> None:
        from .engine import map_in_order, pool_size  # lazy: Ray, only with --engine ray

        target = job.target
        path = target.path or getattr(target.graph.document, "path", None)
        if not path or not Path(path).is_file():
            raise EvalError(f"--engine ray runs spec files, and '{target.graph.name}' was not loaded from one")
        if job.supplied:
            raise EvalError(f"--engine ray cannot hand the driver's objects for {', '.join(job.supplied)} to its "
                            "workers; leave them to the spec's resources or use the local engine")
        ray = self.connect()
        chunks = [todo[s:s + self.batch_size] for s in range(0, len(todo), self.batch_size)]
        groups = [json.dumps([{"i": i, "request": job.request(case)} for i, case in chunk], ensure_ascii=False)
                  for chunk in chunks]
        self.used_workers = size = min(pool_size(ray, self.workers), len(groups))
        spec = str(Path(path).resolve())
        kwargs = {"spec": spec, "variant": target.variant, "trust": self.trust, "dataset": self.dataset,
                  "n_cases": len(job.cases), "digest": cases_digest(job.cases), "stamp": job.stamp.id,
                  "concurrency": job.concurrency}
        for batch in map_in_order(ray, groups, EvalWorker, kwargs, workers=size, progress=self.progress):
            answers = [json.loads(text) for text in batch["answer"]]
            await asyncio.gather(*(on_answer(a["i"], job.cases[a["i"]], CaseAnswer(
                a["outputs"], a["error"], trace_from_json(a["trace"]), float(a["latency_ms"]))) for a in answers))


__all__ = ["DEFAULT_EVAL_BATCH", "EvalWorker", "RayEvalEngine", "trace_from_json", "trace_to_json"]
