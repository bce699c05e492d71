"""``llmrec train``: fit the trainable nodes of a spec on its dataset's training cases, and the artifact store.

A node type is *trainable* when it has a ``fit`` classmethod (a generic protocol: nothing here names a node
type)::

    @classmethod
    def fit(cls, config, examples: list[TrainingExample], *, node_id: str) -> Artifact: ...
    @classmethod
    def artifact_status(cls, config) -> str | None: ...   # None when a current artifact exists, else why not
    @classmethod
    def bind(cls, config, *, node_id: str, graph: Graph) -> None: ...  # optional: learn its id and graph

A config with ``train_on_first_use: true`` trains itself at start, so ``llmrec validate`` does not warn about its
missing artifact.

Training a node: the spec's ``dataset`` resource (a resource whose type provides :class:`~llmrec.data.Dataset`)
is loaded once; a *derived* spec keeps only the node's ancestors and has the node's ``inputs:`` expressions as
its outputs, so running it once per training case yields exactly what the node would receive (the node itself
does not run). Each case's resolved inputs plus its ``relevant`` set make one :class:`TrainingExample`.
``fit`` returns an :class:`Artifact`, written atomically to ``<model_path>/<node id>-<hash>/`` (a temporary
folder, then ``os.replace``) with a ``latest`` pointer file beside it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

from .errors import InputError, LlmrecError, RunError
from .hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from .data import Dataset, EvalCase
    from .graph.build import Graph

LATEST = "latest"
META = "meta.json"


class ModelNotTrainedError(RunError):
    """A trainable node has no usable artifact (none yet, or trained with another config)."""


class TrainingError(LlmrecError):
    """``llmrec train`` cannot train: no trainable node, no dataset, no training cases, a failing case."""


@dataclass(frozen=True)
class TrainingExample:
    """One training case as a trainable node sees it: its resolved inputs and the ids that count as hits."""

    case_id: str
    inputs: dict[str, Any]
    relevant: frozenset[str]
    gains: Mapping[str, float] | None = None
    labelled_by: str = "dataset"  # or "node": the spec's label node (e.g. an LLM) gave this case's labels


@dataclass
class Artifact:
    """What ``fit`` returns: files to write under ``<model_path>/<name>-<digest>/`` plus a summary."""

    model_path: Path
    name: str
    digest: str
    files: dict[str, bytes | str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.model_path / f"{self.name}-{self.digest}"

    def save(self, force: bool = False) -> bool:
        """Write atomically and point ``latest`` at it; returns False when it already existed (and not forced)."""
        folder = self.folder
        self.model_path.mkdir(parents=True, exist_ok=True)
        written = True
        if folder.exists() and not force:
            written = False
        else:
            tmp = self.model_path / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                for name, content in {**self.files, META: json.dumps(self.meta, indent=2, sort_keys=True)}.items():
                    mode = "wb" if isinstance(content, bytes) else "w"
                    with open(tmp / name, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as fh:
                        fh.write(content)
                if folder.exists():  # --force over an existing folder: a directory rename needs an empty target
                    old = self.model_path / f".old-{folder.name}-{uuid.uuid4().hex[:8]}"
                    os.replace(folder, old)
                    os.replace(tmp, folder)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        pointer = self.model_path / f".{LATEST}-{uuid.uuid4().hex[:8]}"
        pointer.write_text(folder.name + "\n", encoding="utf-8")
        os.replace(pointer, self.model_path / LATEST)
        return written


def digest(value: Any, length: int = 12) -> str:
    """A short, stable hash of JSON-able data (or bytes)."""
    data = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:length]


def find_artifact(model_path: Path, config_hash: str) -> Path | None:
    """The artifact folder trained with ``config_hash``: the ``latest`` one if it matches, else the newest that
    does; None when there is none."""
    if not model_path.is_dir():
        return None
    pointer = model_path / LATEST
    if pointer.is_file():
        folder = model_path / pointer.read_text(encoding="utf-8").strip()
        if read_meta(folder).get("config_hash") == config_hash:
            return folder
    best: tuple[float, Path] | None = None
    for meta_file in model_path.glob(f"*/{META}"):
        meta = read_meta(meta_file.parent)
        if meta.get("config_hash") == config_hash and not meta_file.parent.name.startswith("."):
            created = float(meta.get("created", 0))
            if best is None or created > best[0]:
                best = (created, meta_file.parent)
    return best[1] if best else None


def read_meta(folder: Path) -> dict[str, Any]:
    """An artifact's meta.json, or {} when missing or unreadable."""
    try:
        data = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def train_command(spec_display: str, node_id: str | None = None) -> str:
    """The command that trains a spec (one node when ``node_id`` is given)."""
    return f"llmrec train {spec_display}" + (f" --node {node_id}" if node_id else "")


# -- finding what to train --------------------------------------------------------------------------------------


def is_trainable(cls: Any) -> bool:
    return callable(getattr(cls, "fit", None))


def trainable_nodes(graph: Graph) -> list[str]:
    """Ids of the graph's trainable nodes, upstream first (a trainable node feeding another trains first)."""
    return [n for n in graph.order if n in graph.nodes and is_trainable(graph.nodes[n].cls)]


def dataset_resources(graph: Graph) -> list[str]:
    """Names of the graph's resources whose type provides a :class:`~llmrec.data.Dataset`."""
    from .data import Dataset

    out = []
    for name, res in graph.resources.items():
        provides = getattr(res.cls, "provides", None)
        if isinstance(provides, type) and issubclass(provides, Dataset):
            out.append(name)
    return out


LABELS_OUTPUT = "labels__"


def label_node(graph: Graph, node_id: str) -> str | None:
    """The node whose output labels ``node_id``'s training cases (its config's ``labels``), if any."""
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

    from .api import build

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
) -> list[TrainingExample]:
    """Run the derived graph of ``node_id`` once per case; each case's outputs are the node's inputs."""
    from .runtime.executor import Runtime

    sub = derived_graph(graph, node_id)
    rt = Runtime(sub, resources={n: v for n, v in resources.items() if n in sub.resources})
    declared = set(sub.spec.inputs)
    sem = asyncio.Semaphore(concurrency)

    async def one(case: EvalCase) -> TrainingExample:
        inputs = {k: v for k, v in case.inputs.items() if k in declared}
        async with sem:
            try:
                result = await rt.run(inputs)
            except InputError as exc:
                raise TrainingError(f"training case '{case.id}' does not fit the spec's inputs: {exc}") from None
            except RunError as exc:
                raise TrainingError(f"training case '{case.id}': {exc}") from None
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


async def atrain(
    graph: Graph,
    nodes: list[str] | None = None,
    *,
    force: bool = False,
    dataset: str | None = None,
    resources: dict[str, Any] | None = None,
    max_cases: int | None = None,
    log: Callable[[str], None] | None = None,
) -> list[TrainReport]:
    """Train the graph's trainable nodes (or ``nodes``), upstream first; returns one report per node.

    ``resources`` may hold already loaded resource values by name (the dataset, a model), which are reused.
    """
    say = log or (lambda _: None)
    trainable = trainable_nodes(graph)
    if not trainable:
        raise TrainingError(f"spec '{graph.name}' has no trainable node (a node type with a 'fit' method, such "
                            "as rank.lambdamart); nothing to train")
    if nodes:
        unknown = [n for n in nodes if n not in trainable]
        if unknown:
            raise TrainingError(f"no trainable node {', '.join(repr(n) for n in unknown)} in spec "
                                f"'{graph.name}' (trainable: {', '.join(trainable)})")
        trainable = [n for n in trainable if n in nodes]
    dataset_name = _pick_dataset(graph, dataset)
    loaded = dict(resources or {})
    if dataset_name not in loaded:
        say(f"loading dataset resource '{dataset_name}'")
        loaded[dataset_name] = await graph.resources[dataset_name].cls(graph.resources[dataset_name].config).load()
    data: Dataset = loaded[dataset_name]
    cases = list(getattr(data, "train_cases", ()) or ())
    if not cases:
        raise TrainingError(
            f"dataset resource '{dataset_name}' has no training cases (split {getattr(data, 'split', '?')!r})",
        )
    if max_cases is not None:
        cases = cases[:max_cases]
    reports = []
    for node_id in trainable:
        node = graph.nodes[node_id]
        started = time.perf_counter()
        say(f"collecting inputs of node '{node_id}' ({node.cls.name}) on {len(cases)} training cases")
        examples = await collect_examples(graph, node_id, cases, loaded)
        artifact = await asyncio.to_thread(node.cls.fit, node.config, examples, node_id=node_id)  # type: ignore[attr-defined]
        written = artifact.save(force=force)
        reports.append(TrainReport(
            node_id=node_id, node_type=node.cls.name, cases=len(examples),
            rows=int(artifact.meta.get("rows", 0)), folder=artifact.folder, written=written,
            metrics=dict(artifact.meta.get("metrics", {})), seconds=time.perf_counter() - started,
            node_labelled=sum(e.labelled_by == "node" for e in examples),
        ))
    return reports


def _pick_dataset(graph: Graph, wanted: str | None) -> str:
    names = dataset_resources(graph)
    if wanted is not None:
        if wanted not in names:
            raise TrainingError(f"no dataset resource '{wanted}' in spec '{graph.name}' "
                                f"(dataset resources: {', '.join(names) or 'none'})")
        return wanted
    if not names:
        raise TrainingError(
            f"spec '{graph.name}' has no dataset resource to train on; declare one, e.g. "
            "resources: {data: {type: dataset, config: {name: bbc-news-profiles, split: user}}}"
        )
    if len(names) > 1:
        raise TrainingError(f"spec '{graph.name}' has several dataset resources ({', '.join(names)}); "
                            "choose one with --dataset NAME")
    return names[0]


def train(path: str | os.PathLike[str], nodes: list[str] | None = None, **kwargs: Any) -> list[TrainReport]:
    """Validate a spec and train its trainable nodes (synchronous; see :func:`atrain`)."""
    from .api import validate

    return asyncio.run(atrain(validate(path), nodes, **kwargs))


# -- hooks: the command, the validate warning, train_on_first_use -------------------------------------------------


@hookimpl
def llmrec_validate_graph(graph: Any, document: Any) -> list[Any]:
    """Warn about trainable nodes without a current artifact, and tell them their id and graph."""
    from .errors import SpecWarning

    trainable = trainable_nodes(graph)
    warnings = []
    for node_id in trainable:
        node = graph.nodes[node_id]
        bind = getattr(node.cls, "bind", None)
        if callable(bind):
            bind(node.config, node_id=node_id, graph=graph)
        labels = getattr(node.config, "labels", None)
        if labels is not None and (labels not in graph.nodes or labels == node_id):
            from difflib import get_close_matches

            from .errors import DanglingReferenceError

            close = get_close_matches(str(labels), list(graph.nodes), n=1)
            loc = document.positions.value(("nodes", node_id, "config", "labels")) or document.at(("nodes", node_id),
                                                                                                 key=True)
            warnings.append(DanglingReferenceError(
                f"'labels' names '{labels}', which is not another node of this spec", loc, node_id,
                f"Did you mean '{close[0]}'?" if close else f"Nodes: {', '.join(graph.nodes)}."))
        if getattr(node.config, "train_on_first_use", False):
            continue  # asked to train itself at start: nothing to warn about
        status = getattr(node.cls, "artifact_status", None)
        problem = status(node.config) if callable(status) else None
        if problem:
            command = train_command(document.display, node_id if len(trainable) > 1 else None)
            where = ("nodes", node_id, "config", "model_path")
            loc = document.positions.value(where) or document.at(("nodes", node_id), key=True)
            warnings.append(SpecWarning(f"{problem}; run `{command}`", loc, node_id,
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
    ) -> None:
        """Fit the spec's trainable nodes (rank.lambdamart...) on its dataset's training cases."""
        from .cli import Exit, _load_graph

        graph = _load_graph(spec)
        say = lambda text: sys.stderr.write(text + "\n")  # noqa: E731
        try:
            reports = asyncio.run(atrain(graph, node or None, force=force, dataset=dataset, max_cases=max_cases,
                                         log=say))
        except TrainingError as exc:
            say(f"error: {exc}")
            raise Exit(1) from None
        for r in reports:
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in r.metrics.items()) or "no validation part"
            state = "wrote" if r.written else "up to date (same config and data; --force rewrites)"
            labeler = label_node(graph, r.node_id)
            labels = "" if labeler is None else (f"; labels: {r.node_labelled} cases from node '{labeler}', "
                                                 f"{r.cases - r.node_labelled} from the dataset")
            sys.stdout.write(f"trained node '{r.node_id}' ({r.node_type}) on {r.cases} cases, {r.rows} rows in "
                             f"{r.seconds:.1f}s{labels}; validation: {metrics}\n  {state}: "
                             f"{os.path.normpath(r.folder)}\n")


__all__ = [
    "Artifact",
    "ModelNotTrainedError",
    "TrainReport",
    "TrainingError",
    "TrainingExample",
    "atrain",
    "collect_examples",
    "dataset_resources",
    "derived_graph",
    "digest",
    "find_artifact",
    "read_meta",
    "train",
    "train_command",
    "trainable_nodes",
]
