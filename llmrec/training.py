"""``llmrec train``: the one training contract every trainer follows, and the command.

A node type or resource type is *trainable* when it has a ``fit`` classmethod. It declares, as data and small
classmethods (a protocol, not a base class; nothing here names a node type)::

    trains_on: ClassVar[str] = "cases"        # "cases": fit gets the node's collected inputs per training case
                                               # "dataset": fit gets the dataset split (e.g. a sequence model)
    @classmethod
    def training_params(cls, config, target: Target) -> dict: ...   # what the artifact depends on
    @classmethod
    def artifact_path(cls, config, target: Target) -> Path: ...     # optional; default: config.model_path
    @classmethod
    def fit(cls, config, ctx: TrainContext) -> TrainOutput: ...     # writes its files into ctx.staging
    @classmethod
    def is_trainable(cls, config, target: Target) -> bool: ...      # optional (a resource whose provider may
                                                                    # or may not be one llmrec trains)

Every classmethod gets its context as a typed parameter, :class:`Target`: which node or resource it is, the
input names it is given, the registry the graph was checked against and the spec's folder; nothing reaches
for a process-wide registry or a folder remembered on the config.

and, to use what it learned, ``start(self, ctx: StartContext)`` (nodes) or ``load(self, ctx: LoadContext)``
(resources): ``await ctx.artifact()`` returns the verified :class:`~llmrec.artifacts.Artifact`, training it
first when the config says ``train_on_first_use: true``, and otherwise raises :class:`ModelNotTrainedError`
with the exact command. No node reaches into training through its config.

What training sees (:class:`TrainContext`): the dataset resource's split. When it has ``train_cases`` (a user
split) those are the validation cases; otherwise (the temporal protocol) a validation split is carved from
each user's *training* events exactly as the test split was (PROTOCOLS.md: tuning never sees test), and
upstream nodes learn from the carved training log. Artifacts are written through
:mod:`llmrec.artifacts` (versioned, atomic, metadata with a data content hash and checksums).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

from . import progress
from .api import build, validate
from .artifacts import Artifact, ArtifactError, ArtifactStore, Staging, params_hash
from .data import Catalog, Dataset, Interactions
from .data.splits import split_interactions
from .errors import DanglingReferenceError, InputError, LlmrecError, RunError, SpecWarning
from .hookspecs import hookimpl
from .node import LoadContext, StartContext
from .runtime.executor import Runtime, load_resource
from .types import Candidates

if TYPE_CHECKING:  # pragma: no cover
    from .data import Dataset, EvalCase, Interactions
    from .graph.build import Graph


class ModelNotTrainedError(RunError):
    """A trainable node has no usable artifact (none yet, or trained with another config)."""


class TrainingError(LlmrecError):
    """``llmrec train`` cannot train: no trainable node, no dataset, no training cases, a failing case."""


class TrainingInterrupted(LlmrecError):
    """Training was stopped at a safe point (Ctrl-C); the message says where. Trainers raise it (or a subclass)
    when ``ctx.should_stop()`` turns true; ``llmrec train`` exits 130 with the resume command."""


@dataclass(frozen=True)
class TrainingExample:
    """One training case as a trainable node sees it: its resolved inputs and the ids that count as hits."""

    case_id: str
    inputs: dict[str, Any]
    relevant: frozenset[str]
    gains: Mapping[str, float] | None = None
    labelled_by: str = "dataset"  # or "node": the spec's label node (e.g. an LLM) gave this case's labels


@dataclass(frozen=True)
class TrainOutput:
    """What ``fit`` returns after writing its files into ``ctx.staging``."""

    data_hash: str  # content hash of exactly what was learned from (versions the artifact)
    metrics: dict[str, Any] = field(default_factory=dict)  # validation metrics, training time...
    meta: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping in meta.json
    rows: int = 0  # training rows / sequences / examples, for the report


@dataclass
class TrainContext:
    """Everything ``fit`` may use, handed to it as one typed parameter."""

    name: str  # the node id or resource name being trained
    trainer: str  # its registered type name
    dataset: Dataset  # the split to learn from: ``train`` is what may be learned, ``train_cases`` validate
    examples: list[TrainingExample]  # trains_on == "cases": the node's inputs per training case; else []
    inputs: frozenset[str]  # the input names the node is given (nodes; empty for resources)
    params: dict[str, Any]  # training_params(config, target): what the artifact is versioned by
    staging: Staging  # write the artifact's files here
    checkpoint_dir: Path  # survives an interrupted run with the same params (resumable trainers)
    seed: int = 0
    device: str = "cpu"  # "cuda" when torch sees a GPU and the config does not say otherwise
    progress: Callable[[str], None] = lambda _: None  # one line of progress for the user
    should_stop: Callable[[], bool] = lambda: False  # True after Ctrl-C: stop at the next safe point
    #: every training event, the carved validation events included, when ``dataset`` is a validation split carved
    #: from training (None otherwise): for a final refit once validation has picked the hyper-parameters
    refit_train: Interactions | None = None
    #: which node or resource this is, with the graph's registry and the spec's folder
    target: Target | None = None

    @property
    def validation(self) -> tuple[EvalCase, ...]:
        return tuple(self.dataset.train_cases)


def train_command(spec_display: str, node_id: str | None = None) -> str:
    """The command that trains a spec (one node when ``node_id`` is given)."""
    return f"llmrec train {spec_display}" + (f" --node {node_id}" if node_id else "")


# -- finding what to train --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One trainable thing of a graph: a node or a resource, and the context the training contract's classmethods
    receive (``training_params(config, target)``, ``artifact_path(config, target)``, ``is_trainable(...)``)."""

    kind: str  # "node" or "resource"
    name: str
    cls: Any
    config: Any
    inputs: frozenset[str]  # the input names the node is given (empty for resources)
    #: the :class:`~llmrec.registry.Registry` the graph was checked against (providers, backends, ...)
    registry: Any = None
    base_dir: Path | None = None  # the spec's folder: relative paths resolve from here

    @property
    def trains_on(self) -> str:
        return getattr(self.cls, "trains_on", "cases")

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.cls.training_params(self.config, self))

    @property
    def first_use(self) -> bool:
        return bool(getattr(self.config, "train_on_first_use", False))

    def store(self, hint: str | None = None) -> ArtifactStore:
        where = getattr(self.cls, "artifact_path", None)
        root = where(self.config, self) if callable(where) else self.config.model_path
        return ArtifactStore(root, self.name, hint)


def is_trainable(target: Target) -> bool:
    """Whether ``target`` trains: its type has ``fit``, and its ``is_trainable(config, target)`` (if any) agrees."""
    if not callable(getattr(target.cls, "fit", None)):
        return False
    check = getattr(target.cls, "is_trainable", None)
    return not callable(check) or bool(check(target.config, target))


def targets(graph: Graph) -> list[Target]:
    """The graph's trainable resources, then its trainable nodes upstream first."""
    base = graph.document.base_dir if getattr(graph, "document", None) is not None else None
    found = [Target("resource", n, r.cls, r.config, frozenset(), graph.registry, base)
             for n, r in graph.resources.items()]
    for n in graph.order:
        node = graph.nodes.get(n)
        if node is not None:
            found.append(Target("node", n, node.cls, node.config, frozenset(node.spec.inputs), graph.registry, base))
    return [t for t in found if is_trainable(t)]


def trainable_nodes(graph: Graph) -> list[str]:
    """Names of the graph's trainable resources and nodes, in training order."""
    return [t.name for t in targets(graph)]


def _target(graph: Graph, name: str) -> Target:
    for t in targets(graph):
        if t.name == name:
            return t
    raise TrainingError(f"'{name}' is not a trainable node or resource of spec '{graph.name}'")


def _command_for(graph: Graph, name: str) -> str:
    display = graph.document.display if getattr(graph, "document", None) is not None else "<spec file>"
    return train_command(display, name if len(targets(graph)) > 1 else None)


async def ensure_artifact(graph: Graph, name: str, resource: Callable[[str], Awaitable[Any]] | None = None,
                          log: Callable[[str], None] | None = None) -> Artifact:
    """The verified artifact of trainable ``name``; trains it first when its config says train_on_first_use.

    A missing, stale or corrupt artifact without train_on_first_use raises :class:`ModelNotTrainedError` /
    :class:`~llmrec.artifacts.ArtifactError` naming the command that (re)trains it."""
    t = _target(graph, name)
    command = _command_for(graph, name)
    store = t.store(f"Retrain it: `{command} --force`")
    params = t.params
    try:
        found = store.load(params)
    except ArtifactError:
        if not t.first_use:
            raise
        found = None  # corrupt: train_on_first_use trains a fresh copy
    if found is not None:
        return found
    problem = store.status(params) or "the model is corrupt"
    if not t.first_use:
        raise ModelNotTrainedError(f"{problem}; run `{command}` first (or set train_on_first_use: true)",
                                   name if t.kind == "node" else None)
    say = log or (lambda text: None if progress.is_quiet() else sys.stderr.write(text + "\n"))
    say(f"{t.kind} '{name}' ({t.cls.name}): {problem}; training it now (train_on_first_use)")
    with progress.step(f"training {t.cls.name} '{name}' (first use)"):
        preset: dict[str, Any] = {}
        if resource is not None:
            names = dataset_resources(graph)
            if len(names) == 1:
                preset[names[0]] = await resource(names[0])
        await atrain(graph, [name], resources=preset, force=True, log=say)
    return store.open(store.find(params_hash(params)) or store.root)


def dataset_resources(graph: Graph) -> list[str]:
    """Names of the graph's resources whose type provides a :class:`~llmrec.data.Dataset`."""
    out = []
    for name, res in graph.resources.items():
        provides = getattr(res.cls, "provides", None)
        if isinstance(provides, type) and issubclass(provides, Dataset):
            out.append(name)
    return out


LABELS_OUTPUT = "labels__"


def label_node(graph: Graph, node_id: str) -> str | None:
    """The node whose output labels ``node_id``'s training cases (its config's ``labels``), if any."""
    if node_id not in graph.nodes:
        return None
    name = getattr(graph.nodes[node_id].config, "labels", None)
    if name is None:
        return None
    if not isinstance(name, str) or name not in graph.nodes or name == node_id:
        raise TrainingError(f"node '{node_id}': 'labels' names {name!r}, which is not another node of spec "
                            f"'{graph.name}' (nodes: {', '.join(graph.nodes)})")
    return name


def derived_graph(graph: Graph, node_id: str) -> Graph:
    """A graph of ``node_id``'s ancestors whose outputs are its input expressions (``in__NAME``), plus the
    output of its label node (``labels__``) when it has one."""
    import networkx as nx


    doc = graph.document
    assert doc.spec is not None
    keep = nx.ancestors(graph.dag, node_id)
    outputs = {f"in__{name}": value for name, value in graph.nodes[node_id].spec.inputs.items()}
    labeler = label_node(graph, node_id)
    if labeler is not None:
        keep |= nx.ancestors(graph.dag, labeler) | {labeler}
        outputs[LABELS_OUTPUT] = "${" + labeler + "}"
    nodes = {n: s for n, s in doc.spec.nodes.items() if n in keep}
    text = json.dumps([{n: s.model_dump(mode="json") for n, s in nodes.items()}, outputs], default=str)
    used = set(re.findall(r"resources\.([A-Za-z_][A-Za-z0-9_]*)", text))
    resources = {n: r for n, r in doc.spec.resources.items() if n in used}
    spec = doc.spec.model_copy(update={"nodes": nodes, "outputs": outputs, "resources": resources})
    data = {**doc.data, "nodes": {n: doc.data.get("nodes", {}).get(n) for n in nodes}, "outputs": outputs,
            "resources": {n: doc.data.get("resources", {}).get(n) for n in resources}}
    return build(dataclasses.replace(doc, spec=spec, data=data, errors=[]))


# -- training -----------------------------------------------------------------------------------------------------


@dataclass
class TrainReport:
    """What training one node did."""

    node_id: str
    node_type: str
    cases: int
    rows: int
    folder: Path
    written: bool
    metrics: dict[str, float]
    seconds: float
    node_labelled: int = 0  # cases whose labels came from the spec's label node (e.g. an LLM), not the dataset
    #: what the data came from when it was not the spec's dataset resource (``--from-logs``: the log's summary,
    #: :class:`llmrec.data.logged.LogSummary` as a dict); also in the artifact's meta.json as ``data_source``
    data_source: dict[str, Any] | None = None


def _as_labels(value: Any, case_id: str) -> tuple[frozenset[str], Mapping[str, float] | None]:
    """Relevant ids and graded gains from a label node's output: ``{grades, relevant}`` (llm.relevance), a
    mapping id -> gain (relevant: gain > 0), or a list of relevant ids."""
    grades = getattr(value, "grades", None)
    if grades is None and isinstance(value, Mapping) and "grades" in value:
        grades = value["grades"]
    relevant = getattr(value, "relevant", None)
    if relevant is None and isinstance(value, Mapping) and "relevant" in value:
        relevant = value["relevant"]
    if grades is not None:
        gains = {str(k): float(v) for k, v in dict(grades).items()}
        ids = frozenset(str(i) for i in relevant) if relevant is not None else frozenset(k for k, v in gains.items() if v > 0)
        return ids, {k: v for k, v in gains.items() if v > 0}
    if isinstance(value, Mapping):
        gains = {str(k): float(v) for k, v in value.items()}
        return frozenset(k for k, v in gains.items() if v > 0), gains
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return frozenset(value), None
    raise TrainingError(f"training case '{case_id}': the label node gave {type(value).__name__}; expected "
                        "{grades, relevant} (llm.relevance), a mapping id -> gain, or a list of ids")


async def collect_examples(
    graph: Graph,
    node_id: str,
    cases: list[EvalCase],
    resources: dict[str, Any],
    concurrency: int = 8,
    stop: Callable[[], bool] | None = None,
    advance: Callable[[int], None] | None = None,
) -> list[TrainingExample]:
    """Run the derived graph of ``node_id`` once per case; each case's outputs are the node's inputs.
    ``advance(1)`` is called as each case is done (a progress bar)."""
    sub = derived_graph(graph, node_id)
    rt = Runtime(sub, resources={n: v for n, v in resources.items() if n in sub.resources})
    declared = set(sub.spec.inputs)
    sem = asyncio.Semaphore(concurrency)

    async def one(case: EvalCase) -> TrainingExample:
        inputs = {k: v for k, v in case.inputs.items() if k in declared}
        async with sem:
            if stop is not None and stop():
                raise TrainingInterrupted(f"while collecting the inputs of node '{node_id}'")
            try:
                result = await rt.run(inputs)
            except InputError as exc:
                raise TrainingError(f"training case '{case.id}' does not fit the spec's inputs: {exc}") from None
            except RunError as exc:
                raise TrainingError(f"training case '{case.id}': {exc}") from None
        if advance is not None:
            advance(1)
        labels = result.outputs.pop(LABELS_OUTPUT, None)
        values = {name[len("in__"):]: value for name, value in result.outputs.items()}
        if labels is not None:
            relevant, gains = _as_labels(labels, case.id)
            return TrainingExample(case.id, values, relevant, gains, labelled_by="node")
        return TrainingExample(case.id, values, frozenset(case.relevant), case.gains)

    try:
        await rt.start()
        return list(await asyncio.gather(*(one(c) for c in cases)))
    finally:
        await rt.close()


def validation_dataset(data: Dataset) -> Dataset:
    """The split training learns from: ``data`` itself when it has training cases (a user split), else a
    validation split carved from each user's training events with the dataset's own temporal protocol."""
    if data.train_cases or data.split not in ("temporal", "leave-last"):
        return data
    train, held, cases, _ = split_interactions(data.train, data.split)  # type: ignore[arg-type]
    return dataclasses.replace(data, train=train, test=held, test_cases=(), train_cases=cases,
                               split=f"{data.split}-validation",
                               description=f"validation split carved from the training events of {data.name}")


_HASHES: dict[int, tuple[Any, str]] = {}


def data_hash(data: Dataset) -> str:
    """A content hash of what a dataset trainer learns from: the catalog's ids and titles, the training events
    and the validation cases (memoised per object)."""
    hit = _HASHES.get(id(data))
    if hit is not None and hit[0] is data:
        return hit[1]
    h = hashlib.sha256()
    for item in data.catalog:
        h.update(f"{item.id}\x1f{item.title}\x1f{item.category}\x1e".encode())
    for it in data.train:
        h.update(f"{it.user_id}\x1f{it.item_id}\x1f{it.event}\x1f{it.rating}\x1f{it.timestamp}\x1e".encode())
    for case in data.train_cases:
        h.update(f"{case.id}\x1f{sorted(case.relevant)}\x1e".encode())
    value = h.hexdigest()[:16]
    if len(_HASHES) > 64:
        _HASHES.clear()
    _HASHES[id(data)] = (data, value)
    return value


def default_device(config: Any) -> str:
    wanted = getattr(config, "device", "auto") or "auto"
    if wanted != "auto":
        return str(wanted)
    if "torch" in sys.modules:  # only a trainer that uses torch can use a GPU; never import it just to ask
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except Exception:  # pragma: no cover - torch missing or broken
            return "cpu"
    return "cpu"


class StopFlag:
    """Set by Ctrl-C while a trainer runs in a worker thread; trainers poll it through ctx.should_stop."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self) -> bool:
        return self.event.is_set()


def fit_target(t: Target, *, dataset: Dataset | None = None, examples: list[TrainingExample] | None = None,
               force: bool = False, store: ArtifactStore | None = None, log: Callable[[str], None] | None = None,
               stop: Callable[[], bool] | None = None, refit_train: Interactions | None = None,
               data_source: Mapping[str, Any] | None = None) -> tuple[Artifact, bool, TrainOutput]:
    """Fit one trainable on what it trains on and commit its artifact: returns the verified artifact, whether
    it was written, and the trainer's output. ``llmrec train`` calls this; so can tests and plugin authors.
    ``data_source`` (where the data came from, when not the spec's dataset) goes into meta.json."""
    started = time.perf_counter()
    store = store or t.store()
    params = t.params
    data = dataset if dataset is not None else Dataset("none", Catalog([]), Interactions([]), Interactions([]))
    with store.staging() as staging:
        ctx = TrainContext(
            name=t.name, trainer=t.cls.name, dataset=data, examples=list(examples or []), inputs=t.inputs,
            params=params, staging=staging, checkpoint_dir=store.checkpoint_dir(params),
            seed=int(getattr(t.config, "seed", 0) or 0), device=default_device(t.config),
            progress=log or (lambda _: None), should_stop=stop or (lambda: False), refit_train=refit_train,
            target=t,
        )
        output: TrainOutput = t.cls.fit(t.config, ctx)
        metrics = {**output.metrics, "train_seconds": round(time.perf_counter() - started, 3)}
        folder, written = store.commit(staging, params=params, data_hash=output.data_hash, trainer=t.cls.name,
                                       metrics=metrics, extra={**output.meta, "rows": output.rows,
                                                               "cases": len(ctx.examples) or len(data.train_cases),
                                                               **({"data_source": dict(data_source)}
                                                                  if data_source else {})},
                                       force=force)
    # the run finished: its resume checkpoint is spent (a later --force trains from the start, not from it)
    shutil.rmtree(ctx.checkpoint_dir, ignore_errors=True)
    return store.open(folder), written, output


def standalone_start(t: Target) -> StartContext:
    """A StartContext for a node used outside a spec (tests, notebooks): its artifact must already exist."""

    async def artifact() -> Artifact:
        store = t.store()
        found = store.load(t.params)
        if found is None:
            raise ModelNotTrainedError(f"{store.status(t.params)}; train it first", t.name)
        return found

    return StartContext(node_id=t.name, graph=None, base_dir=t.base_dir, artifact=artifact, registry=t.registry)


#: ``--log-test``: the latest share of logged impressions held out of training
LOG_TEST_FRACTION = 0.2
#: ``--log-cases`` when a trainer learns from the dataset's events (a rec-LM): each user's latest 20% of
#: impressions validate, the feedback of the earlier ones is what it learns from
LOG_EVENT_CASES = 0.2


async def atrain(
    graph: Graph,
    nodes: list[str] | None = None,
    *,
    force: bool = False,
    dataset: str | None = None,
    resources: dict[str, Any] | None = None,
    max_cases: int | None = None,
    log: Callable[[str], None] | None = None,
    stop: Callable[[], bool] | None = None,
    from_logs: Any = None,
    log_test: float = LOG_TEST_FRACTION,
    log_cases: float | None = None,
) -> list[TrainReport]:
    """Train the graph's trainable resources and nodes (or those named), in order; one report each.

    ``resources`` may hold already loaded resource values by name (the dataset, a model), which are reused.
    ``from_logs`` (a serve log: folder, ``.db`` file, ``NAME:WHERE``) trains on the logged impressions and
    feedback instead of the dataset resource's cases (:func:`llmrec.data.logged.spec_logged_dataset`, with the
    resource's catalog and training interactions): ``log_test`` is the latest share of impressions held out,
    ``log_cases`` each user's share of training impressions that are cases (default :func:`log_case_share`).
    """
    say = log or (lambda _: None)
    found = targets(graph)
    if not found:
        raise TrainingError(f"spec '{graph.name}' has nothing to train (a node or resource type with a 'fit' "
                            "method, such as rank.lambdamart or an llm resource with provider reclm)")
    if nodes:
        names = [t.name for t in found]
        unknown = [n for n in nodes if n not in names]
        if unknown:
            raise TrainingError(f"no trainable node or resource {', '.join(repr(n) for n in unknown)} in spec "
                                f"'{graph.name}' (trainable: {', '.join(names)})")
        found = [t for t in found if t.name in nodes]
    dataset_name = pick_dataset(graph, dataset)
    loaded = dict(resources or {})
    if dataset_name not in loaded:
        say(f"loading dataset resource '{dataset_name}'")
        with progress.step(f"loading dataset resource '{dataset_name}'"):
            loaded[dataset_name] = await load_resource(graph, dataset_name, dict(loaded))
    original = loaded[dataset_name]
    source: dict[str, Any] | None = None
    if from_logs is not None:  # the hook of `--from-logs`: the logged dataset replaces the resource's
        original, source = await _from_logs(graph, dataset_name, loaded, from_logs, found, log_test, log_cases)
        say(f"training on the serve log {source['source']}: {source['train_cases']} training cases, "
            f"{len(original.train)} interactions, {source['test_cases']} impressions held out")
    data = validation_dataset(original)
    refit_train = original.train if data is not original else None
    if not len(data.train):
        raise TrainingError(f"dataset resource '{dataset_name}' has no training interactions to learn from")
    cases = list(data.train_cases)
    if not cases:
        raise TrainingError(
            f"dataset resource '{dataset_name}' has no training cases (split {data.split!r}); use split "
            "'user' or 'temporal', and a dataset with more than one event per user",
        )
    if max_cases is not None:
        cases = cases[:max_cases]
        data = dataclasses.replace(data, train_cases=tuple(cases))
    loaded[dataset_name] = data  # upstream nodes learn from the (carved) training events only
    cancelled = threading.Event()  # set when the awaiting task is cancelled (Ctrl-C during `llmrec run`)

    def should_stop() -> bool:
        return cancelled.is_set() or (stop is not None and stop())
    reports = []
    for t in found:
        started = time.perf_counter()
        command = _command_for(graph, t.name)
        store = t.store(f"Retrain it: `{command} --force`")
        examples: list[TrainingExample] = []
        if t.trains_on == "cases":
            say(f"collecting inputs of node '{t.name}' ({t.cls.name}) on {len(cases)} training cases ({data.split})")
            with progress.step(f"collecting inputs of node '{t.name}' (training cases)", total=len(cases)) as advance:
                examples = await collect_examples(graph, t.name, cases, loaded, stop=should_stop, advance=advance)
            shown = original.extra.get("shown") if source is not None else None
            if shown is not None:  # logged cases: learn from what the user saw, not from what was never shown
                examples = [observed_only(e, shown.get(e.case_id, ())) for e in examples]
        else:
            current = None if force else _current(store, t, data)
            if current is not None:  # the same params and the same data: nothing to learn again
                say(f"{t.kind} '{t.name}' ({t.cls.name}) is up to date ({current.version}); --force retrains it")
                reports.append(TrainReport(
                    node_id=t.name, node_type=t.cls.name, cases=len(cases), rows=int(current.meta.get("rows") or 0),
                    folder=current.folder, written=False, metrics=current.metrics,
                    seconds=time.perf_counter() - started, data_source=source))
                continue
            say(f"training {t.kind} '{t.name}' ({t.cls.name}) on {len(data.train)} events of "
                f"{len(data.train.users())} users, validating on {len(cases)} cases ({data.split})")
        try:
            with progress.step(f"training {t.cls.name} {t.kind} '{t.name}'"):
                artifact, written, output = await asyncio.to_thread(
                    fit_target, t, dataset=data, examples=examples, force=force, store=store, log=say,
                    stop=should_stop, refit_train=refit_train, data_source=source)
        except asyncio.CancelledError:
            # the worker thread cannot be killed: ask the trainer to stop at its next safe point (a resumable
            # checkpoint), so that the process can exit instead of waiting for the whole training
            cancelled.set()
            say(f"interrupted: {t.kind} '{t.name}' stops training at its next safe point; run `{command}` (or "
                "the same command again) to resume")
            raise
        folder = artifact.folder
        reports.append(TrainReport(
            node_id=t.name, node_type=t.cls.name, cases=len(examples) or len(cases), rows=output.rows,
            folder=folder, written=written, metrics=dict(output.metrics), seconds=time.perf_counter() - started,
            node_labelled=sum(e.labelled_by == "node" for e in examples), data_source=source,
        ))
    return reports


def observed_only(example: TrainingExample, shown: Collection[str]) -> TrainingExample:
    """``example`` with each of its candidate lists (an input that is a :class:`~llmrec.types.Candidates`, or a
    list of them as rank.blend's ``lists``) cut to the items in ``shown``, in their order. For a logged case the
    feedback labels only what the impression showed: an item the user never saw is unobserved, not a negative,
    and learning it as one teaches a ranker to copy the logging policy (say, a diversity cap's unshown items of
    a liked category would all be negatives)."""
    keep = set(shown)

    def cut(value: Any) -> Any:
        if isinstance(value, Candidates):
            return value.model_copy(update={"items": [c for c in value.items if c.id in keep]})
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, Candidates) for v in value):
            return type(value)(cut(v) for v in value)
        return value

    return dataclasses.replace(example, inputs={name: cut(value) for name, value in example.inputs.items()})


def log_case_share(found: list[Target]) -> float:
    """The default ``--log-cases``: 1.0 (every training impression is a case, the interactions stay the ones
    the server answered from) when every trainer learns from cases (rank.lambdamart), else
    :data:`LOG_EVENT_CASES` (a trainer that learns from the events, such as a rec-LM, needs the feedback as
    interactions)."""
    return 1.0 if all(t.trains_on == "cases" for t in found) else LOG_EVENT_CASES


async def _from_logs(graph: Graph, name: str, loaded: dict[str, Any], log: Any, found: list[Target],
                     test_fraction: float, case_share: float | None) -> tuple[Dataset, dict[str, Any]]:
    """The logged dataset that replaces dataset resource ``name`` and its summary (``--from-logs``)."""
    # lazy: the serve log reader and the provenance stamps, only for --from-logs
    from .data.logged import spec_logged_dataset
    from .serve.logs import provenance_stamp

    for other in dataset_resources(graph):  # the stamp covers every dataset the server had loaded
        if other not in loaded:
            loaded[other] = await load_resource(graph, other, loaded)
    stamp = await asyncio.to_thread(provenance_stamp, graph, {n: loaded[n] for n in dataset_resources(graph)})
    try:
        logged = await asyncio.to_thread(
            spec_logged_dataset, graph, log, loaded[name], stamp=stamp.id, test_fraction=test_fraction,
            case_share=log_case_share(found) if case_share is None else case_share)
    except ValueError as exc:  # a share out of range
        raise TrainingError(str(exc)) from None
    return logged.dataset, logged.summary.to_dict()


def _current(store: ArtifactStore, t: Target, data: Dataset) -> Artifact | None:
    """A dataset trainer's verified artifact when it was trained with these params on exactly this data."""
    try:
        found = store.load(t.params)
    except ArtifactError:
        return None
    if found is None or found.meta.get("data_hash") != data_hash(data):
        return None
    return found


def pick_dataset(graph: Graph, wanted: str | None, purpose: str = "train on",
                 error: type[LlmrecError] = TrainingError,
                 example: str = "{name: bbc-news-profiles, split: user}") -> str:
    """The spec's dataset resource to use (``--dataset NAME`` when it has several); ``error`` names what is wrong.
    Shared by every command that learns from a spec's dataset (train, finetune, distill)."""
    names = dataset_resources(graph)
    if wanted is not None:
        if wanted not in names:
            raise error(f"no dataset resource '{wanted}' in spec '{graph.name}' "
                        f"(dataset resources: {', '.join(names) or 'none'})")
        return wanted
    if not names:
        raise error(f"spec '{graph.name}' has no dataset resource to {purpose}; declare one, e.g. "
                    f"resources: {{data: {{type: dataset, config: {example}}}}}")
    if len(names) > 1:
        raise error(f"spec '{graph.name}' has several dataset resources ({', '.join(names)}); "
                    "choose one with --dataset NAME")
    return names[0]


def train(path: str | os.PathLike[str], nodes: list[str] | None = None, **kwargs: Any) -> list[TrainReport]:
    """Validate a spec and train its trainable nodes (synchronous; see :func:`atrain`)."""
    return asyncio.run(atrain(validate(path), nodes, **kwargs))


# -- hooks: the command, the validate warning, train_on_first_use -------------------------------------------------


@hookimpl
def llmrec_validate_graph(graph: Any, document: Any) -> list[Any]:
    """Warn about trainable nodes and resources without a current artifact, naming the command."""
    found = targets(graph)
    warnings = []
    for t in found:
        if t.kind == "node":
            labels = getattr(t.config, "labels", None)
            if labels is not None and (labels not in graph.nodes or labels == t.name):
                from difflib import get_close_matches


                close = get_close_matches(str(labels), list(graph.nodes), n=1)
                loc = (document.positions.value(("nodes", t.name, "config", "labels"))
                       or document.at(("nodes", t.name), key=True))
                warnings.append(DanglingReferenceError(
                    f"'labels' names '{labels}', which is not another node of this spec", loc, t.name,
                    f"Did you mean '{close[0]}'?" if close else f"Nodes: {', '.join(graph.nodes)}."))
        if t.first_use:
            continue  # asked to train itself at start: nothing to warn about
        try:
            problem = t.store().status(t.params)
        except (OSError, ValueError) as exc:  # a hostile model_path (a NUL byte, too long): say so, never crash
            problem = f"model_path is not a usable folder ({exc.strerror if isinstance(exc, OSError) else exc})"
        if problem:
            command = train_command(document.display, t.name if len(found) > 1 else None)
            section = "nodes" if t.kind == "node" else "resources"
            loc = (document.positions.value((section, t.name, "config", "model_path"))
                   or document.at((section, t.name), key=True))
            warnings.append(SpecWarning(f"{problem}; run `{command}`", loc, t.name if t.kind == "node" else None,
                                        "Until then the spec validates but does not run."))
    return warnings


@hookimpl
def llmrec_register_commands(cli: Any) -> None:
    global typer  # the command's annotations are strings (PEP 563), resolved by typer in this module's globals
    import typer

    @cli.command(name="train")
    def train_cmd(
        spec: Annotated[Path, typer.Argument(help="The spec whose trainable nodes to train.", show_default=False)],
        node: Annotated[Optional[list[str]], typer.Option("--node", help="Train only this node (repeatable).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Rewrite artifacts that are already up to date.")] = False,
        dataset: Annotated[
            Optional[str], typer.Option("--dataset", help="The dataset resource to train on (when several).")
        ] = None,
        max_cases: Annotated[
            Optional[int], typer.Option("--max-cases", min=1, help="Use only the first N training cases.")
        ] = None,
        trust: Annotated[bool, typer.Option("--trust", help="Trust the spec's folder: import the code it names (docs/security.md).")] = False,
        quiet: Annotated[bool, typer.Option(
            "--quiet", "-q", help="No progress on stderr (bars and step messages); errors still print.")] = False,
        from_logs: Annotated[Optional[str], typer.Option(
            "--from-logs", metavar="LOG",
            help="Train on a serve log's impressions and feedback instead of the dataset's cases: the folder of "
                 "`llmrec serve --log-dir`, a .db file or NAME:WHERE (docs/feedback-training.md).")] = None,
        log_test: Annotated[float, typer.Option(
            "--log-test", help="With --from-logs: the latest share of logged impressions held out of training "
                               "(0 trains on all).")] = LOG_TEST_FRACTION,
        log_cases: Annotated[Optional[float], typer.Option(
            "--log-cases", help="With --from-logs: the share of each user's training impressions (their latest) "
                                "that are training cases; the earlier ones' feedback becomes interactions "
                                f"(default: 1, or {LOG_EVENT_CASES} when a trainer learns from events, a rec-LM)."
        )] = None,
    ) -> None:
        """Fit the spec's trainable nodes (rank.lambdamart...) on its dataset's training cases, or on the
        impressions and feedback a server logged (--from-logs).

        \b
        Examples:
          llmrec train specs/news_ltr.yaml
          llmrec train specs/quickstart.yaml --node ranked --force
          llmrec train specs/movielens_blend.yaml --max-cases 200 -q
          llmrec train specs/quickstart.yaml --from-logs logs/
        """
        # lazy: typer, only once a command runs (this module is a default plugin)
        from .commands import EXIT_FAILED, Exit, load_graph

        if from_logs is None and (log_test != LOG_TEST_FRACTION or log_cases is not None):
            raise typer.BadParameter("applies with --from-logs LOG only",
                                     param_hint="'--log-test' / '--log-cases'")
        if quiet:
            progress.set_quiet(True)
        graph = load_graph(spec, trust)
        say = lambda text: sys.stderr.write(text + "\n")  # noqa: E731
        info = (lambda _: None) if quiet else say
        flag = StopFlag()
        previous = signal.getsignal(signal.SIGINT)

        resume = (train_command(str(spec)) + "".join(f" --node {n}" for n in node or ())
                  + (f" --from-logs {from_logs}" if from_logs is not None else "")
                  + (f" --log-test {log_test:g}" if from_logs is not None and log_test != LOG_TEST_FRACTION else "")
                  + (f" --log-cases {log_cases:g}" if from_logs is not None and log_cases is not None else ""))

        def interrupt(signum: int, frame: Any) -> None:
            if flag.event.is_set():  # a second Ctrl-C: stop now (a worker thread cannot be interrupted)
                say(f"interrupted: stopped at once; nothing half-written is used; resume with `{resume}`")
                sys.stderr.flush()
                os._exit(130)
            flag.event.set()
            say("stopping at the next safe point (Ctrl-C again to stop now)")

        signal.signal(signal.SIGINT, interrupt)
        try:
            reports = asyncio.run(atrain(graph, node or None, force=force, dataset=dataset, max_cases=max_cases,
                                         log=info, stop=flag, from_logs=from_logs, log_test=log_test,
                                         log_cases=log_cases))
        except TrainingError as exc:
            say(f"error: {exc}")
            raise Exit(EXIT_FAILED) from None
        except (TrainingInterrupted, KeyboardInterrupt) as exc:
            where = f" {exc}" if isinstance(exc, TrainingInterrupted) and str(exc) else ""
            say(f"interrupted:{where} nothing half-written was kept; resume with `{resume}`")
            raise Exit(130) from None
        finally:
            signal.signal(signal.SIGINT, previous)
        if reports and reports[0].data_source is not None:
            from .data.logged import LogSummary  # lazy: only after --from-logs

            sys.stdout.write("\n".join(LogSummary(**reports[0].data_source).lines()) + "\n")
        for r in reports:
            metrics = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in r.metrics.items()) or "no validation part"
            state = "wrote" if r.written else "up to date (same config and data; --force rewrites)"
            labeler = label_node(graph, r.node_id)
            labels = "" if labeler is None else (f"; labels: {r.node_labelled} cases from node '{labeler}', "
                                                 f"{r.cases - r.node_labelled} from the dataset")
            kind = "node" if r.node_id in graph.nodes else "resource"
            sys.stdout.write(f"trained {kind} '{r.node_id}' ({r.node_type}) on {r.cases} cases, {r.rows} rows in "
                             f"{r.seconds:.1f}s{labels}; validation: {metrics}\n  {state}: "
                             f"{os.path.normpath(r.folder)}\n")


__all__ = [
    "LoadContext",
    "ModelNotTrainedError",
    "StartContext",
    "Target",
    "TrainContext",
    "TrainOutput",
    "TrainReport",
    "TrainingError",
    "TrainingExample",
    "TrainingInterrupted",
    "atrain",
    "collect_examples",
    "data_hash",
    "dataset_resources",
    "pick_dataset",
    "derived_graph",
    "ensure_artifact",
    "fit_target",
    "log_case_share",
    "observed_only",
    "standalone_start",
    "targets",
    "train",
    "train_command",
    "trainable_nodes",
    "validation_dataset",
]
