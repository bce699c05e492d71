"""build + check: a loaded spec -> a validated :class:`Graph`, or every error at once.

Nothing here runs a node or loads a resource: node types contribute only their Config models, their declared
signatures and their ``check`` methods. Errors carry the position of the exact key or value at fault.
"""

from __future__ import annotations

import graphlib
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path as Path_fs
from typing import TYPE_CHECKING, Any, get_args, get_origin
from typing import Literal as TLiteral

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from ..errors import (
    DanglingReferenceError,
    GraphCycleError,
    Location,
    OutputSchemaError,
    SpecError,
    SpecErrors,
    SpecValidationError,
    SpecWarning,
    TemplateError,
    TypeMismatchError,
    UnknownNodeTypeError,
)
from ..node import CheckContext, NodeType, OutputSchemaProblem, Problem, ResourceType, Signature
from ..paths import confine
from ..registry import Registry
from ..spec.loader import SpecDocument, offset_location, pydantic_errors, suggest
from ..spec.models import InputSpec, NodeSpec, ResourceSpec, Spec
from ..spec.refs import BadRef, DictExpr, Expr, Interp, ListExpr, Literal, Ref, RefExpr, compile_value
from ..spec.yamlpos import Path_
from ..templates import (
    TemplateProblem,
    check_expression,
    compile_expression,
    compile_template,
    variables,
)
from ..templates import check as check_template
from ..trust import UntrustedCode
from ..trust import hint as trust_hint
from .state import StateProblem, state_model
from .typecheck import (
    UNKNOWN,
    attribute_names,
    attribute_type,
    compatible,
    input_python_type,
    literal_type,
    type_name,
)

if TYPE_CHECKING:
    import networkx as nx

#: (producer, consumer) -> "data" or "fallback", in the order the edges were found
Edges = dict[tuple[str, str], str]


@dataclass
class BuiltResource:
    name: str
    spec: ResourceSpec
    cls: type[ResourceType]
    config: BaseModel


@dataclass
class BuiltNode:
    """A node with everything the executor needs, computed once at build time."""

    id: str
    spec: NodeSpec
    cls: type[NodeType]
    config: BaseModel
    signature: Signature
    bindings: dict[str, Expr]
    deps: frozenset[str] = frozenset()
    when: Any = None  # compiled Jinja expression
    when_deps: frozenset[str] = frozenset()  # nodes the condition reads
    cache_key: Expr | None = None
    fallback_template: Any = None  # compiled Jinja template
    fallback_only: bool = False  # not on any output's data path: runs only if a fallback asks for it

    @property
    def output_type(self) -> Any:
        return self.signature.output


@dataclass
class Graph:
    """A validated spec: nodes, resources, outputs and the DAG between them. Build with :func:`build`.

    ``edges`` maps (producer, consumer) to ``"data"`` or ``"fallback"``; ``dag`` is the same graph as a networkx
    ``DiGraph`` (nodes in spec order, edges with a ``kind`` attribute), built on first use, so that validating
    never imports networkx."""

    document: SpecDocument
    spec: Spec
    registry: Registry
    nodes: dict[str, BuiltNode]
    resources: dict[str, BuiltResource]
    outputs: dict[str, Expr]
    edges: Edges
    request_model: type[BaseModel]
    order: list[str]
    warnings: list[SpecWarning] = field(default_factory=list)
    #: the ``state:`` block's model (``${state}``) and the expression whose value is the next state
    state_model: type[BaseModel] | None = None
    state_update: Expr | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def dag(self) -> nx.DiGraph:
        return _digraph(self.spec.nodes, self.edges)


def _digraph(nodes: Any, edges: Edges) -> nx.DiGraph:
    import networkx as nx  # only for callers of Graph.dag and for reporting cycles: 0.2-0.3 s to import

    dag = nx.DiGraph()
    dag.add_nodes_from(nodes)
    for (src, dst), kind in edges.items():
        dag.add_edge(src, dst, kind=kind)
    return dag


def _ancestors(edges: Edges, node: str, kinds: tuple[str, ...] = ("data", "fallback")) -> set[str]:
    """Every node with a path to ``node`` over edges of ``kinds`` (networkx.ancestors without networkx)."""
    preds: dict[str, list[str]] = {}
    for (src, dst), kind in edges.items():
        if kind in kinds:
            preds.setdefault(dst, []).append(src)
    seen: set[str] = set()
    stack = list(preds.get(node, ()))
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(preds.get(n, ()))
    seen.discard(node)
    return seen


_INPUT_ATTR = re.compile(r"(?<![\w.])inputs\.([A-Za-z_][A-Za-z0-9_]*)")
_REF_IN_TEXT = re.compile(r"\$\{([^}]*)\}")


class _Checker:
    def __init__(self, doc: SpecDocument, registry: Registry) -> None:
        assert doc.spec is not None
        self.doc = doc
        self.spec: Spec = doc.spec
        self.registry = registry
        self.errors: list[SpecError] = []
        self.warnings: list[SpecWarning] = []
        self.nodes: dict[str, BuiltNode] = {}
        self.resources: dict[str, BuiltResource] = {}
        self.input_types = {
            name: _input_type(i) for name, i in self.spec.inputs.items()
        }
        self.env = registry.template_env
        # names written in the spec, including entries that failed validation (already reported)
        self.node_names = list(doc.declared.get("nodes", self.spec.nodes))
        self.resource_names = list(doc.declared.get("resources", self.spec.resources))
        self.input_names = list(doc.declared.get("inputs", self.spec.inputs))
        self.state_model: type[BaseModel] | None = None
        self.state_update: Expr | None = None

    # -- helpers ---------------------------------------------------------------------------------------
    def err(self, cls: type[SpecError], message: str, path: Path_, node: str | None = None,
            hint: str | None = None, key: bool = False, loc: Location | None = None) -> None:
        self.errors.append(cls(message, loc or self.doc.at(path, key=key), node, hint))

    def ref_location(self, ref: Ref) -> Location:
        return offset_location(self.doc, ref.where, ref.offset)

    # -- state -----------------------------------------------------------------------------------------
    def build_state(self) -> None:
        """The ``state:`` block's model, before any reference to ``${state}`` is checked."""
        st = self.spec.state
        if st is None:
            return
        while True:  # a bad field is reported and left out, so that references to the others are still checked
            try:
                self.state_model = state_model(st, self.doc.dir_for(("state", "schema")), self.spec.name)
                return
            except StateProblem as exc:
                message = str(exc) if str(exc).startswith("state") else f"state: {exc}"
                self.err(SpecValidationError, message, ("state", *exc.field), None, exc.hint)
                if not (isinstance(st.schema_, dict) and len(exc.field) > 1 and exc.field[1] in st.schema_):
                    return
                st = st.model_copy(update={"schema_": {k: v for k, v in st.schema_.items() if k != exc.field[1]}})
            except UntrustedCode as exc:
                self.err(SpecValidationError, f"state: {exc}", ("state", "schema"), None,
                         trust_hint(self.doc.base_dir))
                return

    def build_state_update(self) -> None:
        """``state.update``: one reference whose type fits the state model."""
        st = self.spec.state
        if st is None:
            return
        path: Path_ = ("state", "update")
        bad: list[BadRef] = []
        expr = compile_value(st.update, path, bad)
        self._bad_refs(bad, path, None)
        if bad:
            return
        if not isinstance(expr, RefExpr):
            self.err(SpecValidationError, "state.update must be one reference, e.g. '${track.state}'", path, None,
                     "Name the node output that is the next state.")
            return
        t = self.ref_type(expr.ref, None)
        self.state_update = expr
        if t is not None and self.state_model is not None and not (
                compatible(t, self.state_model) or compatible(t, dict[str, Any])):
            self.err(TypeMismatchError, f"state.update: {expr.ref.text} is {type_name(t)}, but the state is "
                     f"{type_name(self.state_model)}", path, None,
                     "Reference a node output of the state's type (or a mapping of its fields).")

    # -- resources -------------------------------------------------------------------------------------
    def build_resources(self) -> None:
        for name, rspec in self.spec.resources.items():
            path: Path_ = ("resources", name)
            cls = self._lookup(self.registry.resource_types, rspec.type, path, None, "resource type")
            if cls is None:
                continue
            config = self._config(cls, rspec.config, path, None, f"resource type '{rspec.type}'")
            if config is None:
                continue
            ctx = self._check_context(path, name, {})
            try:
                found = cls.check(config, ctx)
            except (OSError, ValueError, OverflowError, RecursionError) as exc:
                self._hostile(exc, path, None, f"resource type '{rspec.type}'")
                continue
            for problem in found:
                self._check_problem(problem, rspec.config, path, None)
            self.resources[name] = BuiltResource(name, rspec, cls, config)

    def _lookup(self, table: Any, type_: str, path: Path_, node: str | None, kind: str) -> Any:
        cls = table.get(type_)
        if cls is not None:
            return cls
        close = table.suggest(type_)
        skipped = getattr(self.registry, "skipped_plugins", [])
        if skipped:
            files = ", ".join(f"plugins/{p.name}" for p in skipped)
            hint = (f"{files} beside the spec may define it, but was not imported: the folder is not trusted. "
                    + trust_hint(self.doc.base_dir))
        elif getattr(self.registry, "refused_plugins", None):
            hint = ("; ".join(r.message() for r in self.registry.refused_plugins)
                    + ". It may provide it; 'llmrec plugins' says why it was refused.")
        elif close:
            names = " or ".join(f"'{e.name}' (from {e.plugin.label()})" for e in close)
            hint = f"Did you mean {names}? Run 'llmrec plugins' to list {kind}s."
        else:
            hint = f"Run 'llmrec plugins' to list {kind}s, or install the plugin that provides it."
        self.err(UnknownNodeTypeError, f"unknown {kind} '{type_}'", path + ("type",), node, hint)
        return None

    def _config(self, cls: Any, raw: dict[str, Any], path: Path_, node: str | None, what: str) -> BaseModel | None:
        try:
            context = {"base_dir": self.doc.dir_for(path + ("config",)), "registry": self.registry}
            return cls.Config.model_validate(raw, context=context)
        except ValidationError as exc:
            self.errors.extend(
                pydantic_errors(exc, self.doc, path + ("config",), cls.Config, node_id=node, what=f"config of {what}")
            )
            return None
        except (OSError, ValueError, OverflowError, RecursionError) as exc:
            self._hostile(exc, path, node, what)
            return None

    def _hostile(self, exc: BaseException, path: Path_, node: str | None, what: str) -> None:
        """A config whose validation or check touched the file system with a hostile path (too long, a NUL byte)
        or converted a number too large: the spec's problem, said at its config, never a crash."""
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        elif isinstance(exc, ValueError) and str(exc):
            reason = str(exc)[:160]
        else:
            reason = type(exc).__name__
        where = path + ("config",) if self.doc.at(path + ("config",)) is not None else path
        self.err(SpecValidationError, f"invalid config of {what}: {reason}", where, node,
                 "Check the config's paths (each part at most 255 characters) and numbers.")

    def _check_context(self, path: Path_, node_id: str, inputs: dict[str, Any]) -> CheckContext:
        return CheckContext(
            node_id=node_id,
            base_dir=self.doc.dir_for(path),
            declared_inputs=set(inputs),
            request_inputs=set(self.spec.inputs),
            template_env=self.env,
            inputs=dict(inputs),
            registry=self.registry,
        )

    # -- nodes -----------------------------------------------------------------------------------------
    def build_nodes(self) -> None:
        for node_id, nspec in self.spec.nodes.items():
            path: Path_ = ("nodes", node_id)
            cls = self._lookup(self.registry.node_types, nspec.type, path, node_id, "node type")
            if cls is None:
                self._check_unbuilt(node_id, nspec, path)
                continue
            config = self._config(cls, nspec.config, path, node_id, f"node type '{nspec.type}'")
            if config is None:
                continue
            try:
                signature = cls.signature(config)
            except (TemplateProblem, OutputSchemaProblem) as exc:
                self._node_problem(exc, path, node_id)
                continue
            bad: list[BadRef] = []
            bindings = {
                name: compile_value(value, path + ("inputs", name), bad) for name, value in nspec.inputs.items()
            }
            self._bad_refs(bad, path + ("inputs",), node_id)
            for name in nspec.inputs:
                if name not in signature.params and not signature.variadic:
                    close = suggest(name, signature.params)
                    accepted = ", ".join(signature.params) or "none"
                    hint = f"Did you mean '{close[0]}'?" if close else f"Its inputs are: {accepted}."
                    self.err(SpecValidationError, f"node type '{nspec.type}' has no input '{name}'",
                             path + ("inputs", name), node_id, hint, key=True)
            for pname, param in signature.params.items():
                if param.required and pname not in nspec.inputs:
                    self.err(SpecValidationError,
                             f"missing required input '{pname}' ({type_name(param.type)}) of node type '{nspec.type}'",
                             path + ("inputs",) if "inputs" in nspec.inputs or nspec.inputs else path, node_id,
                             f"Add it under 'inputs:', e.g. {pname}: ${{other_node.{pname}}}.",
                             key=True)
            ctx = self._check_context(path, node_id, nspec.inputs)
            try:
                problems = cls.check(config, ctx)
            except (TemplateProblem, OutputSchemaProblem) as exc:
                self._node_problem(exc, path, node_id)
                continue
            except (OSError, ValueError, OverflowError, RecursionError) as exc:
                self._hostile(exc, path, node_id, f"node type '{nspec.type}'")
                continue
            for problem in problems:
                self._check_problem(problem, nspec.config, path, node_id)
            self._warn_config_refs(nspec.config, path + ("config",), node_id)
            if nspec.cache is not None and nspec.cache.path:  # a cache folder resolves from the spec's folder

                try:  # and stays inside the folders a spec may use (llmrec/paths.py)
                    folder = confine(Path_fs(self.doc.dir_for(path + ("cache",))), Path_fs(nspec.cache.path))
                except ValueError as exc:
                    self.err(SpecValidationError, f"invalid 'cache.path': {exc}", path + ("cache", "path"), node_id)
                    continue
                nspec = nspec.model_copy(update={"cache": nspec.cache.model_copy(update={"path": str(folder)})})
            self.nodes[node_id] = BuiltNode(node_id, nspec, cls, config, signature, bindings)

    def _check_problem(self, problem: Any, config: dict[str, Any], path: Path_, node_id: str | None) -> None:
        """One result of a node or resource type's ``check``: a message, a (key, message) pair or a Problem."""
        if not isinstance(problem, Problem):
            field_, message = problem if isinstance(problem, tuple) else (None, problem)
            problem = Problem(str(message), field_)
        field_ = problem.field
        where = path + ("config", field_) if field_ and field_ in config else path + ("config",)
        if problem.warning:
            self.warnings.append(SpecWarning(problem.message, self.doc.at(where, key=field_ is None), node_id,
                                             problem.hint))
        else:
            self.err(SpecValidationError, problem.message, where, node_id, problem.hint, key=field_ is None)

    def _warn_config_refs(self, value: Any, path: Path_, node_id: str) -> None:
        """``${...}`` is expanded in 'inputs' and 'outputs', not in 'config': say so instead of passing it on."""
        if isinstance(value, dict):
            for k, v in value.items():
                self._warn_config_refs(v, path + (k,), node_id)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self._warn_config_refs(v, path + (i,), node_id)
        elif isinstance(value, str) and re.search(r"(?<!\$)\$\{(?!env:)", value):
            self.warnings.append(SpecWarning(
                "'${...}' in 'config' is not expanded (references work in 'inputs' and 'outputs')",
                self.doc.at(path), node_id,
                "Pass the value under 'inputs:' and use it from there; write '$${' for a literal '${'.",
            ))

    def _check_unbuilt(self, node_id: str, nspec: NodeSpec, path: Path_) -> None:
        """A node whose type is unknown: its references can still be checked."""
        bad: list[BadRef] = []
        for name, value in nspec.inputs.items():
            for r in compile_value(value, path + ("inputs", name), bad).refs():
                self.ref_type(r, node_id)
        self._bad_refs(bad, path + ("inputs",), node_id)

    def _node_problem(self, exc: Exception, path: Path_, node_id: str) -> None:
        field_ = getattr(exc, "field", None)
        where = path + ("config", field_) if field_ else path + ("config",)
        cls = TemplateError if isinstance(exc, TemplateProblem) else OutputSchemaError
        hint = getattr(exc, "hint", None)
        self.err(cls, str(exc), where, node_id, hint)

    def _bad_refs(self, bad: list[BadRef], path: Path_, node_id: str | None) -> None:
        for b in bad:
            self.errors.append(
                SpecValidationError(
                    f"invalid reference '{b.text}'",
                    offset_location(self.doc, b.where, b.offset) if b.where else self.doc.at(path),
                    node_id,
                    "Write ${inputs.NAME}, ${resources.NAME}, ${NODE} or ${NODE.FIELD}.",
                )
            )

    # -- references and types --------------------------------------------------------------------------
    def ref_type(self, ref: Ref, owner: str | None) -> Any:
        """Static type of a reference, or None after reporting it as dangling."""
        loc = self.ref_location(ref)
        if ref.root == "inputs":
            if not ref.attrs:
                return dict[str, Any]
            name = ref.attrs[0]
            if name not in self.input_names:
                close = suggest(name, self.input_names)
                hint = f"Did you mean '${{inputs.{close[0]}}}'?" if close else (
                    f"Declare it under 'inputs:' (declared: {', '.join(self.input_names) or 'none'})."
                )
                self.errors.append(DanglingReferenceError(f"'{ref.text}' refers to undeclared input '{name}'", loc, owner, hint))
                return None
            t, rest = self.input_types.get(name, UNKNOWN), ref.attrs[1:]
            what = f"inputs.{name}"
        elif ref.root == "state":
            if self.spec.state is None:
                self.errors.append(DanglingReferenceError(
                    f"'{ref.text}' refers to the session state, but the spec has no 'state:' block", loc, owner,
                    "Declare it: state: {schema: {FIELD: {type: ..., default: ...}}, update: ${NODE.FIELD}}."))
                return None
            t, rest = (self.state_model or UNKNOWN), ref.attrs
            what = "state"
        elif ref.root == "resources":
            if not ref.attrs:
                self.errors.append(DanglingReferenceError(f"'{ref.text}' must name a resource", loc, owner,
                                                          "Write ${resources.NAME}."))
                return None
            name = ref.attrs[0]
            if name not in self.resource_names:
                close = suggest(name, self.resource_names)
                hint = f"Did you mean '${{resources.{close[0]}}}'?" if close else (
                    f"Declare it under 'resources:' (declared: {', '.join(self.resource_names) or 'none'})."
                )
                self.errors.append(DanglingReferenceError(f"'{ref.text}' refers to unknown resource '{name}'", loc, owner, hint))
                return None
            built = self.resources.get(name)
            t, rest = (built.cls.provides if built else UNKNOWN), ref.attrs[1:]
            what = f"resources.{name}"
        else:
            if ref.root not in self.node_names:
                close = suggest(ref.root, self.node_names + ["inputs", "resources"])
                if close and close[0] in ("inputs", "resources"):
                    hint = f"Did you mean '${{{close[0]}.{'.'.join(ref.attrs)}}}'?"
                elif close:
                    hint = f"Did you mean '${{{'.'.join((close[0],) + ref.attrs)}}}'?"
                elif ref.root in self.input_types:
                    hint = f"Did you mean '${{inputs.{ref.root}}}'?"
                else:
                    hint = "References name a node id, inputs.NAME or resources.NAME."
                self.errors.append(DanglingReferenceError(f"'{ref.text}' refers to unknown node '{ref.root}'", loc, owner, hint))
                return None
            built_node = self.nodes.get(ref.root)
            t, rest = (built_node.output_type if built_node else UNKNOWN), ref.attrs
            what = ref.root
        for attr in rest:
            sub = attribute_type(t, attr)
            if sub is None:
                names = attribute_names(t)
                close = suggest(attr, names)
                hint = f"Did you mean '{close[0]}'?" if close else (
                    f"Its fields are: {', '.join(names)}." if names else None
                )
                self.errors.append(
                    DanglingReferenceError(f"'{ref.text}': {what} ({type_name(t)}) has no field '{attr}'", loc, owner, hint)
                )
                return None
            t, what = sub, f"{what}.{attr}"
        return t

    def expr_type(self, expr: Expr, owner: str | None) -> Any:
        if isinstance(expr, Literal):
            return literal_type(expr.value)
        if isinstance(expr, RefExpr):
            return self.ref_type(expr.ref, owner)
        if isinstance(expr, Interp):
            for r in expr.refs():
                self.ref_type(r, owner)
            return str
        if isinstance(expr, ListExpr):
            types_ = [self.expr_type(i, owner) for i in expr.items]
            return ("list", types_)
        if isinstance(expr, DictExpr):
            for _, v in expr.items:
                self.expr_type(v, owner)
            return dict[str, Any]
        return Any

    def check_binding(self, node: BuiltNode, name: str, expr: Expr) -> None:
        t = self.expr_type(expr, node.id)
        param = node.signature.params.get(name)
        if param is None or t is None:
            return
        path = ("nodes", node.id, "inputs", name)
        if isinstance(t, tuple):  # a YAML list of expressions: check each element
            expected = param.type
            origin = get_origin(expected)
            elem = get_args(expected)[0] if origin in (list, tuple, set, frozenset) and get_args(expected) else None
            if elem is None:
                if not compatible(list[Any], expected):
                    self.err(TypeMismatchError, f"input '{name}' expects {type_name(expected)}, got a list",
                             path, node.id)
                return
            for i, (sub, item) in enumerate(zip(t[1], expr.items)):  # type: ignore[attr-defined]
                if sub is not None and not compatible(sub, elem):
                    src = item.ref.text if isinstance(item, RefExpr) else repr(getattr(item, "value", "..."))
                    self.err(TypeMismatchError,
                             f"input '{name}' item {i} expects {type_name(elem)}, but {src} is {type_name(sub)}",
                             path + (i,), node.id)
            return
        if isinstance(expr, Literal):
            self._check_literal(node, name, expr.value, param.type, path)
            return
        if not compatible(t, param.type):
            src = expr.ref.text if isinstance(expr, RefExpr) else "the value"
            self.err(TypeMismatchError,
                     f"input '{name}' expects {type_name(param.type)}, but {src} is {type_name(t)}",
                     path, node.id,
                     "Reference a field of the right type, or change the producing node.")

    def _check_literal(self, node: BuiltNode, name: str, value: Any, expected: Any, path: Path_) -> None:
        try:
            TypeAdapter(expected).validate_python(value)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            self.err(TypeMismatchError,
                     f"input '{name}' expects {type_name(expected)}: {first['msg']} (got {value!r})",
                     path, node.id)
        except Exception:  # an annotation pydantic cannot build a validator for: skip the literal check
            return

    def wire(self) -> None:
        for node in self.nodes.values():
            deps: set[str] = set()
            for name, expr in node.bindings.items():
                self.check_binding(node, name, expr)
                deps.update(r.root for r in expr.refs() if r.node)
            nspec, path = node.spec, ("nodes", node.id)
            if nspec.when is not None:
                node.when_deps = frozenset(self._check_when(node, nspec.when, path + ("when",)))
                deps |= node.when_deps
                if self.spec.state is not None and node.when is not None and "state" in nspec.when:
                    try:
                        if "state" in variables("{{ " + nspec.when.strip().removeprefix("${").removesuffix("}")
                                                + " }}", self.env):
                            node.when_deps |= {"state"}  # read from the request's environment, not waited for
                    except TemplateProblem:
                        pass
            if nspec.cache is not None and nspec.cache.key is not None:
                bad: list[BadRef] = []
                key_expr = compile_value(nspec.cache.key, path + ("cache", "key"), bad)
                self._bad_refs(bad, path + ("cache", "key"), node.id)
                for r in key_expr.refs():
                    if self.ref_type(r, node.id) is not None and r.node:
                        deps.add(r.root)
                node.cache_key = key_expr
            if nspec.cache is not None and nspec.cache.backend not in self.registry.cache_backends:
                close = suggest(nspec.cache.backend, self.registry.cache_backends)
                available = f"Available: {', '.join(sorted(self.registry.cache_backends))}."
                hint = f"Did you mean '{close[0]}'? {available}" if close else available
                self.err(SpecValidationError, f"unknown cache backend '{nspec.cache.backend}'",
                         path + ("cache", "backend"), node.id, hint)
            if nspec.fallback is not None:
                self._check_fallback(node, path + ("fallback",))
            node.deps = frozenset(deps)

    def _check_when(self, node: BuiltNode, source: str, path: Path_) -> set[str]:
        src = source.strip()
        if src.startswith("${") and src.endswith("}") and src.count("${") == 1:
            src = src[2:-1]
        if "${" in src:
            plain = _REF_IN_TEXT.sub(lambda m: m.group(1), src)
            self.err(TemplateError, "'when' is an expression, not a string with ${...} references", path, node.id,
                     f"Write it without ${{}}: '{plain}'.")
            return set()
        available = {"inputs", *self.node_names, *(("state",) if self.spec.state is not None else ())}
        try:
            missing = check_expression(src, available, self.env)
            node.when = compile_expression(src, self.env)
        except TemplateProblem as exc:
            message = str(exc).replace("'end of print statement'", "end of the condition")
            self.err(TemplateError, f"invalid 'when' condition: {message}", path, node.id,
                     "Write a Jinja expression such as 'inputs.query' or 'inputs.k > 5 and not other_node'.")
            return set()
        self._check_input_attrs(src, path, node.id, "'when' condition")
        for name in missing:
            close = suggest(name, available)
            hint = f"Did you mean '{close[0]}'?" if close else "Conditions may use 'inputs' and node ids."
            self.err(TemplateError, f"'when' condition uses '{name}', which is neither 'inputs' nor a node",
                     path, node.id, hint)
        return {n for n in variables("{{ " + src + " }}", self.env) if n in self.node_names}

    def _check_input_attrs(self, source: str, path: Path_, node_id: str, what: str) -> None:
        """``inputs.NAME`` inside a condition or template must name a declared input."""
        for m in _INPUT_ATTR.finditer(source):
            name = m.group(1)
            if name not in self.input_names:
                close = suggest(name, self.input_names)
                hint = f"Did you mean 'inputs.{close[0]}'?" if close else (
                    f"Declared inputs: {', '.join(self.input_names) or 'none'}."
                )
                self.err(DanglingReferenceError, f"{what} uses undeclared input 'inputs.{name}'", path, node_id, hint)

    def _check_fallback(self, node: BuiltNode, path: Path_) -> None:
        fb = node.spec.fallback
        assert fb is not None
        if "node" in fb.model_fields_set:
            target = fb.node
            if target not in self.node_names:
                close = suggest(str(target), self.node_names)
                hint = f"Did you mean '{close[0]}'?" if close else None
                self.err(DanglingReferenceError, f"fallback node '{target}' does not exist", path + ("node",),
                         node.id, hint)
            elif target == node.id:
                self.err(GraphCycleError, "a node cannot fall back to itself", path + ("node",), node.id)
            else:
                other = self.nodes.get(str(target))
                if other is not None and not compatible(other.output_type, node.output_type):
                    self.err(TypeMismatchError,
                             f"fallback node '{target}' produces {type_name(other.output_type)}, "
                             f"but this node produces {type_name(node.output_type)}",
                             path + ("node",), node.id)
        elif "template" in fb.model_fields_set:
            available = {"inputs", "error", *node.spec.inputs}
            try:
                missing = check_template(fb.template or "", available, self.env)
                node.fallback_template = compile_template(fb.template or "", self.env)
            except TemplateProblem as exc:
                self.err(TemplateError, f"fallback template: {exc}", path + ("template",), node.id)
                return
            self._check_input_attrs(fb.template or "", path + ("template",), node.id, "fallback template")
            for name in missing:
                close = suggest(name, available)
                hint = f"Did you mean '{close[0]}'?" if close else (
                    f"Available: {', '.join(sorted(available))}."
                )
                self.err(TemplateError, f"fallback template uses undefined variable '{name}'",
                         path + ("template",), node.id, hint)
            if not compatible(str, node.output_type):
                self.err(TypeMismatchError,
                         f"a fallback template yields a string, but this node produces {type_name(node.output_type)}",
                         path + ("template",), node.id, "Use 'fallback: {value: ...}' or 'fallback: {node: ...}'.")
        else:
            self._check_fallback_value(node, fb.value, path + ("value",))

    def _check_fallback_value(self, node: BuiltNode, value: Any, path: Path_) -> None:
        if value is None and not any(node.id in other.deps for other in self.nodes.values()):
            return  # null for a node that only outputs read: "no answer" (e.g. a judge with no model)
        try:
            TypeAdapter(node.output_type).validate_python(value)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in first["loc"])
            self.err(TypeMismatchError,
                     f"fallback value does not match the node's output {type_name(node.output_type)}: "
                     f"{(loc + ': ') if loc else ''}{first['msg']}",
                     path, node.id)
        except Exception:
            return

    # -- outputs, graph, cycles ------------------------------------------------------------------------
    def build_outputs(self) -> dict[str, Expr]:
        outputs: dict[str, Expr] = {}
        stray = set(self.doc.data) - set(Spec.model_fields) - {"include"}
        if not self.spec.outputs and "outputs" not in self.doc.data and not stray:
            self.err(SpecValidationError, "the spec has no outputs", ("outputs",) if "outputs" in self.doc.data else (),
                     hint="Add an 'outputs:' mapping from names to references, e.g. items: ${rank.items}.",
                     key="outputs" in self.doc.data)
        bad: list[BadRef] = []
        for name, value in self.spec.outputs.items():
            expr = compile_value(value, ("outputs", name), bad)
            for r in expr.refs():
                self.ref_type(r, None)
            outputs[name] = expr
        self._bad_refs(bad, ("outputs",), None)
        return outputs

    def graph(self, outputs: dict[str, Expr]) -> tuple[Edges, list[str]]:
        edges: Edges = {}
        for node in self.nodes.values():
            for d in node.deps:
                if d in self.spec.nodes:
                    edges[(d, node.id)] = "data"
            fb = node.spec.fallback
            if fb is not None and fb.node in self.spec.nodes and fb.node != node.id:
                edges.setdefault((fb.node, node.id), "fallback")  # an input that is also the fallback stays data
        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
        for node_id in self.spec.nodes:
            sorter.add(node_id)
        for src, dst in edges:
            sorter.add(dst, src)
        try:  # the order networkx.topological_sort gives: generation by generation, in spec order
            return edges, list(sorter.static_order())
        except graphlib.CycleError:
            pass
        reported: set[frozenset[str]] = set()
        import networkx as nx  # every cycle, not only the first graphlib finds: the error path only

        for cycle in nx.simple_cycles(_digraph(self.spec.nodes, edges)):
            key = frozenset(cycle)
            if key in reported:
                continue
            reported.add(key)
            start = min(cycle, key=lambda n: self.doc.at(("nodes", n), key=True))
            i = cycle.index(start)
            loop = cycle[i:] + cycle[:i] + [start]
            self.err(GraphCycleError, f"cycle: {' -> '.join(loop)}", ("nodes", start), start,
                     "Break the loop: a node cannot depend, directly or not, on its own output.", key=True)
            if len(reported) >= 20:
                break
        return edges, list(self.spec.nodes)

    def mark_usage(self, edges: Edges, outputs: dict[str, Expr]) -> None:
        nodes = self.spec.nodes
        used: set[str] = set()
        if self.state_update is not None:  # the next state is an output of every run
            outputs = {**outputs, "\0state": self.state_update}
        for expr in outputs.values():
            for r in expr.refs():
                if r.node and r.node in nodes:
                    used.add(r.node)
                    used |= _ancestors(edges, r.node)
        for node in list(self.nodes.values()):  # nodes a used node's config names (e.g. a trainer's label node)
            if node.id in used:
                for other in node.cls.referenced_nodes(node.config):
                    if other in nodes:
                        used |= {other} | _ancestors(edges, other)
        needed: set[str] = set()
        for expr in outputs.values():
            for r in expr.refs():
                if r.node and r.node in nodes:
                    needed.add(r.node)
                    needed |= _ancestors(edges, r.node, ("data",))
        for node in self.nodes.values():
            # not needed by any output's data path: started lazily, only if a fallback asks for it
            node.fallback_only = node.id not in needed
        for node_id in self.spec.nodes:
            if node_id not in used:
                self.warnings.append(
                    SpecWarning("node is not used by any output", self.doc.at(("nodes", node_id), key=True), node_id,
                                "Reference it from 'outputs' or another node, or remove it.")
                )


def _input_type(spec: InputSpec) -> Any:
    t = input_python_type(spec.type, spec.items)
    if spec.enum:
        t = TLiteral[tuple(spec.enum)]  # type: ignore[misc]
    if not spec.is_required and spec.default is None:
        t = t | None
    return t


def request_model(spec: Spec) -> type[BaseModel]:
    """The pydantic model of a request to this spec: its declared inputs, extra fields forbidden."""
    fields: dict[str, Any] = {}
    for name, i in spec.inputs.items():
        kwargs: dict[str, Any] = {"description": i.description or None}
        if i.minimum is not None:
            kwargs["ge"] = i.minimum
        if i.maximum is not None:
            kwargs["le"] = i.maximum
        if i.min_length is not None:
            kwargs["min_length"] = i.min_length
        if i.max_length is not None:
            kwargs["max_length"] = i.max_length
        if i.examples:
            kwargs["examples"] = i.examples
        default = ... if i.is_required else i.default
        fields[name] = (_input_type(i), Field(default, **kwargs))
    model_name = "".join(p.capitalize() for p in re.split(r"[^0-9A-Za-z]+", spec.name) if p)[:60] or "Spec"
    return create_model(  # type: ignore[call-overload, no-any-return]
        f"{model_name}Request", __config__=ConfigDict(extra="forbid", strict=False), **fields
    )


def _check_defaults(checker: _Checker) -> None:
    for name, i in checker.spec.inputs.items():
        for bound in ("minimum", "maximum"):
            value = getattr(i, bound)
            if value is None:
                continue
            if not math.isfinite(value) or abs(value) > 2 ** 63:
                checker.err(SpecValidationError, f"input '{name}': {bound} must be a finite number within "
                            f"+-2^63", ("inputs", name, bound))
            elif i.type == "integer" and value != int(value):
                checker.err(SpecValidationError, f"input '{name}' is an integer: its {bound} must be a whole "
                            f"number, got {value:g}", ("inputs", name, bound))
        for bound in ("min_length", "max_length"):
            value = getattr(i, bound)
            if value is not None and value > 2 ** 62:
                checker.err(SpecValidationError, f"input '{name}': {bound} is too large (at most 2^62)",
                            ("inputs", name, bound))
        if i.minimum is not None and i.maximum is not None and i.minimum > i.maximum:
            checker.err(SpecValidationError, f"input '{name}': minimum {i.minimum:g} is above maximum {i.maximum:g}",
                        ("inputs", name, "minimum"))
        if i.required and "default" in i.model_fields_set:
            checker.err(SpecValidationError, f"input '{name}' is required but has a default",
                        ("inputs", name, "required"), hint="Remove 'required: true', or the default.")
        bounds_ok = i.minimum is None or i.maximum is None or i.minimum <= i.maximum
        if bounds_ok and isinstance(i.default, (int, float)) and not isinstance(i.default, bool):
            if i.minimum is not None and i.default < i.minimum:
                checker.err(SpecValidationError, f"default of input '{name}' ({i.default!r}) is below its minimum "
                            f"{i.minimum:g}", ("inputs", name, "default"))
            if i.maximum is not None and i.default > i.maximum:
                checker.err(SpecValidationError, f"default of input '{name}' ({i.default!r}) is above its maximum "
                            f"{i.maximum:g}", ("inputs", name, "default"))
        if i.is_required or i.default is None:
            continue
        try:
            TypeAdapter(_input_type(i)).validate_python(i.default)
        except ValidationError as exc:
            checker.err(SpecValidationError,
                        f"default of input '{name}' is not a valid {i.type}: {exc.errors(include_url=False)[0]['msg']} "
                        f"(got {i.default!r})",
                        ("inputs", name, "default"))


def check_graph(doc: SpecDocument, registry: Registry) -> tuple[Graph | None, list[SpecError], list[SpecWarning]]:
    """Build and check; returns the graph (None when there are errors), the errors and the warnings."""
    if doc.spec is None:
        return None, list(doc.errors), []
    checker = _Checker(doc, registry)
    checker.errors.extend(doc.errors)
    _check_defaults(checker)
    checker.build_state()
    checker.build_resources()
    checker.build_nodes()
    checker.wire()
    outputs = checker.build_outputs()
    checker.build_state_update()
    edges, order = checker.graph(outputs)
    if not any(isinstance(e, GraphCycleError) for e in checker.errors):
        checker.mark_usage(edges, outputs)
    graph = Graph(
        document=doc,
        spec=doc.spec,
        registry=registry,
        nodes=checker.nodes,
        resources=checker.resources,
        outputs=outputs,
        edges=edges,
        request_model=request_model(doc.spec) if not checker.errors else BaseModel,
        order=order,
        warnings=checker.warnings,
        state_model=checker.state_model,
        state_update=checker.state_update,
    )
    if not checker.errors:
        for extra in registry.hook.llmrec_validate_graph(graph=graph, document=doc):
            for e in extra or []:
                (checker.warnings if isinstance(e, SpecWarning) else checker.errors).append(e)
    errors = sorted(checker.errors, key=SpecError.sort_key)
    # with errors, "not used" warnings are mostly echoes of them (a node of an unknown type uses nothing)
    warnings = [] if errors else sorted(checker.warnings, key=SpecError.sort_key)
    graph.warnings = warnings
    return (None if errors else graph), errors, warnings


def build(doc: SpecDocument, registry: Registry) -> Graph:
    """Build and check, raising :class:`SpecErrors` with every problem when the spec is not valid."""
    graph, errors, _ = check_graph(doc, registry)
    if errors or graph is None:
        raise SpecErrors(errors)
    return graph
