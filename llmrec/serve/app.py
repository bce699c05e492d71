"""The HTTP service of one spec: a FastAPI app built from a validated :class:`~llmrec.graph.build.Graph`.

    app = create_app(ServeOptions(spec=Path("specs/quickstart.yaml")))   # validates; raises SpecErrors

Endpoints: ``POST /v1/recommend`` (``/batch``, ``/stream``), ``POST /v1/feedback``, ``GET /healthz``, ``/readyz``,
``/metrics``, ``/v1/spec``, ``/v1/provenance`` and the playground at ``/``. Every answer carries its request id
(``X-Request-Id``) and the provenance id of the spec that produced it (``X-Llmrec-Provenance``); with a log store
(``--log-dir``, ``--log-store``) every answer is logged as an impression and feedback is accepted
(llmrec/serve/logs.py). With an online experiment (``--experiment ab:A,B`` or ``interleave:A,B``) the server holds
a service per arm (the spec as written or one of its variants) and routes each request by a stable hash of its
user, or answers it with both arms' lists interleaved (llmrec/serve/experiments.py); ``X-Llmrec-Variant`` names
the arm. Request bodies are read and checked here (size, UTF-8, JSON, an object,
then the spec's inputs), so every mistake is a 4xx ``{"error": {"type", "message", "field"}}`` and nothing a
client sends can produce a traceback. Resources load in the background after startup: ``/readyz`` is 503 until
they have. The spec file is watched (and reloaded on SIGHUP); a new version replaces the old one only once it
validates and its resources have loaded.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import os
import re
import signal
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..api import check
from ..errors import DeadlineExceededError, InputError, RunError, SpecErrors
from ..graph import draw
from ..plugins import get_registry, llmrec_version
from ..runtime.batch import batching
from ..runtime.executor import WAVE, Runtime
from ..spec.refs import RefExpr
from ..telemetry import TRACE_ID_HEADER, configure as configure_tracing, log_trace_ids
from ..trust import grant
from ..spec.variants import check_variant, variant_names
from .experiments import (
    Experiment,
    arm_variant,
    assignment_unit,
    interleave_outputs,
    mark_teams,
    parse_experiment,
    shared_resources,
)
from .logs import (FeedbackEvent, LogWriter, Stamp, feedback_record, impression_record, keep_stamp,
                   provenance_stamp, stamp_folder)
from .metrics import Metrics

log = logging.getLogger("llmrec.serve")

OPTIONS_ENV = "LLMREC_SERVE_OPTIONS"
SESSION_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
REQUEST_ID = SESSION_ID  # a client's own X-Request-Id: the same characters
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]", re.ASCII)
_TRUE = frozenset({"1", "true", "yes", "on"})
PLAYGROUND = Path(__file__).with_name("playground.html")


@dataclass
class ServeOptions:
    """Everything ``llmrec serve`` can be told; JSON-serialisable so that ``--workers N`` can pass it on."""

    spec: str
    api_key: str | None = None
    max_body_bytes: int = 1_048_576
    deadline: float | None = None  # seconds per request; None: the spec's budget.latency
    max_concurrency: int = 64  # spec runs in progress at once; past it, 429
    max_batch: int = 100  # requests in one /v1/recommend/batch call
    batch_concurrency: int = 8  # of one batch's requests, how many run at once
    session_store: str = "memory"
    session_options: dict[str, Any] = field(default_factory=dict)
    session_ttl: float = 1800.0
    session_turns: int = 20  # turns kept per session
    session_max_bytes: int = 1_048_576  # oldest turns are dropped while a session's JSON is larger
    reload_interval: float = 2.0  # seconds between checks of the spec's mtime; 0 turns polling off
    log_level: str = "info"
    trust: bool = False  # --trust: the spec's folder may load its code (llmrec/trust.py), in every worker
    log_store: str | None = None  # a registered log store's name (file, sqlite, ...); None: no logging
    log_location: str | None = None  # its folder or file
    log_options: dict[str, Any] = field(default_factory=dict)
    log_queue: int = 10_000  # log records waiting for the writer thread; past it, impressions are dropped (counted)
    rating_range: tuple[float, float] = (0.0, 5.0)  # what a rating's value may be in /v1/feedback
    experiment: str | None = None  # ab:ARM,ARM[:W,W] or interleave:ARM,ARM (llmrec/serve/experiments.py)
    experiment_name: str | None = None  # the assignment hash's name; None: SPEC_NAME:ARM,ARM
    experiment_salt: str = ""
    experiment_seed: int = 0  # interleaving's coin flips
    experiment_override: bool = False  # ?variant=ARM may choose the arm (for testing); off by default
    otel: str | None = None  # --otel console|otlp (llmrec/telemetry.py); None: $OTEL_TRACES_EXPORTER, else off

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeOptions:
        raw = json.loads(os.environ[OPTIONS_ENV])
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


class ApiError(Exception):
    """An error answer: HTTP status, a short machine-readable type, a message, the field at fault."""

    def __init__(self, status: int, type: str, message: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.field, self.extra = status, type, message, field, extra

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, "field": self.field, **self.extra}}


class ErrorDetail(BaseModel):
    type: str = Field(description="invalid_json, invalid_body, invalid_input, body_too_large, unauthorized, "
                                  "overloaded, not_ready, node_failed, deadline_exceeded, ...")
    message: str
    field: str | None = Field(None, description="The input (or query parameter, header) at fault, if any.")


class ErrorBody(BaseModel):
    error: ErrorDetail


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return Response(text.encode("utf-8"), status, headers=headers, media_type="application/json")


# -- one loaded spec ---------------------------------------------------------------------------------------------


class Service:
    """A validated graph, its Runtime and what the server derives from it once (response model, playground
    description, which nodes report grounding fixes). Replaced as a whole when the spec is reloaded."""

    def __init__(self, graph: Any, mtime: int | None = None, arm: str | None = None,
                 variant: str | None = None) -> None:
        self.graph = graph
        self.runtime = Runtime(graph)
        self.mtime = mtime
        self.active = 0  # requests using this service now (an old version closes when they are done)
        self.grounded = frozenset(n for n, b in graph.nodes.items() if b.cls.reports.grounding)
        history = graph.spec.inputs.get("history")
        self.history_input = history is not None and history.type == "array"
        #: a spec with a ``state:`` block keeps its state in the session (a body's "state" overrides it)
        self.keeps_state = graph.state_model is not None and "state" not in graph.spec.inputs
        self.request_model = graph.request_model
        self.response_model = _response_model(graph)
        self.created = time.time()
        self.variant = variant  # the spec variant applied; None is the spec as written
        self.arm = arm  # its arm in an online experiment (a variant's name, or 'default'); None: no experiment
        self.stamp: Stamp | None = None  # set once its resources have loaded (stamp_service)
        self.headers: dict[str, str] = {}  # sent with every answer: X-Llmrec-Provenance (and X-Llmrec-Variant)

    def share(self, resources: dict[str, Any]) -> None:
        """Before it starts: take these already-loaded resources (another arm's) instead of loading them."""
        self.runtime = Runtime(self.graph, resources=resources)

    async def stamp_service(self) -> None:
        """Compute the provenance stamp once (files and datasets are hashed in a thread, off the loop)."""
        try:
            stamp = await asyncio.to_thread(provenance_stamp, self.graph, dict(self.runtime.resources))
        except Exception as exc:  # hashing never stops a spec from serving: the stamp says what failed
            log.warning("spec '%s': no provenance stamp: %s", self.name, _describe(exc))
            stamp = Stamp("unknown", {"spec_name": self.name, "error": _describe(exc)})
        self.stamp = stamp
        self.headers = {"X-Llmrec-Provenance": stamp.id}
        if self.arm is not None:
            self.headers["X-Llmrec-Variant"] = self.arm

    @property
    def name(self) -> str:
        return str(self.graph.name)

    def describe(self) -> dict[str, Any]:
        """What the playground shows: the inputs, the graph laid out in columns, the Mermaid text."""
        g = self.graph
        layer: dict[str, int] = {}
        for node_id in g.order:
            preds = list(g.dag.predecessors(node_id)) if node_id in g.dag else []
            layer[node_id] = 1 + max((layer.get(p, 0) for p in preds), default=0)
        users = draw._input_users(g)
        nodes = [{"id": n, "type": g.nodes[n].cls.name, "layer": layer[n],
                  "when": bool(g.nodes[n].spec.when), "cache": g.nodes[n].spec.cache is not None,
                  "fallback": g.nodes[n].spec.fallback is not None, "inputs": n in users}
                 for n in g.order if n in g.nodes]
        edges = [{"from": s, "to": d, "kind": k or "data"} for s, d, k in g.dag.edges(data="kind")]
        last = max(layer.values(), default=0) + 1
        outputs = [{"name": name, "from": sorted(srcs), "layer": last}
                   for name, srcs in draw._output_sources(g).items()]
        inputs = {name: spec.model_dump(mode="json", exclude_none=True) | {"required": spec.is_required}
                  for name, spec in g.spec.inputs.items()}
        return {"name": g.name, "description": g.spec.description or "", "inputs": inputs,
                "graph": {"nodes": nodes, "edges": edges, "outputs": outputs}, "mermaid": draw.mermaid(g),
                "history_from_session": self.history_input,
                "state": (graph_state_schema(g) if self.keeps_state else None),
                "state_defaults": (g.state_model().model_dump(mode="json") if self.keeps_state else None)}


def _output_type(graph: Any, expr: Any) -> Any:
    if isinstance(expr, RefExpr) and not expr.ref.attrs:
        root = expr.ref.root
        if root in graph.nodes:
            return graph.nodes[root].output_type
        if root == "inputs":
            return Any
    return Any


def _response_model(graph: Any) -> type[BaseModel]:
    """``{"outputs": {...}, "degraded": bool, ...}`` with the outputs typed as far as their nodes declare."""
    base = "".join(p.capitalize() for p in re.split(r"[^A-Za-z0-9]+", graph.name) if p) or "Spec"
    fields_: dict[str, Any] = {}
    for name, expr in graph.outputs.items():
        t = _output_type(graph, expr)
        try:
            create_model("_Probe", x=(t, ...)).model_json_schema(mode="serialization")
        except Exception:  # a type without a JSON schema: describe it as anything
            t = Any
        fields_[name] = (t, ...)
    try:
        outputs = create_model(f"{base}Outputs", **fields_)
    except Exception:
        outputs = dict[str, Any]  # type: ignore[assignment]
    return create_model(  # type: ignore[call-overload, no-any-return]
        f"{base}Response",
        __config__=ConfigDict(extra="allow"),
        outputs=(outputs, ...),
        degraded=(bool, Field(description="True when a node fell back.")),
        fallbacks=(list[dict[str, Any]] | None, Field(
            None, description="When degraded: each node that fell back, what to ('node:ID', 'value', 'template') "
                              "and why.")),
        trace=(dict[str, Any] | None, Field(None, description="Per-node trace, with ?trace=true.")),
        session_id=(str | None, None),
        turn=(int | None, Field(None, description="This turn's number in the session (1 for the first).")),
        session_kept=(bool | None, Field(None, description="False when the session store failed (e.g. Redis "
                                                           "down): answered without the session, turn not kept.")),
        state=(dict[str, Any] | None, Field(None, description="A spec with 'state:': the next session state.")),
        notice=(str | None, Field(None, description="What happened to the session: a new one started (the id was "
                                                   "unknown or had expired), or a saved state that no longer fit "
                                                   "the schema was reset to its defaults.")),
    )


def graph_state_schema(graph: Any) -> dict[str, Any]:
    """The JSON Schema of a spec's state (the playground shows it beside the chat)."""
    try:
        return graph.state_model.model_json_schema()  # type: ignore[no-any-return]
    except Exception:
        return {}


# -- the server -----------------------------------------------------------------------------------------------


class Server:
    """State shared by the endpoints: the current service, sessions, limits and metrics."""

    def __init__(self, options: ServeOptions, graph: Any | None = None, tracing: Any = None) -> None:
        self.options = options
        # OpenTelemetry (llmrec/telemetry.py): None when off, and then nothing of the SDK is imported
        self.own_tracing = tracing is None
        self.tracing = configure_tracing(options.otel, install=True) if tracing is None else tracing
        if self.tracing is not None:
            log_trace_ids(log, self.tracing)
        self.path = Path(options.spec)
        if options.trust:
            grant(self.path.resolve().parent)
        if graph is None:
            graph, errors, _ = check(self.path, str(self.path))
            if errors or graph is None:
                raise SpecErrors(errors)
        self.experiment: Experiment | None = None
        if options.experiment:
            self.experiment = parse_experiment(options.experiment, options.experiment_name, options.experiment_salt,
                                               options.experiment_seed, str(graph.name))  # ValueError: say what
        #: the services: one per arm of the experiment (by arm name, the control first), else the spec's alone
        self.arms: dict[str | None, Service] = self._services(graph, self._arm_graphs(graph), self._mtime())
        self.current = next(iter(self.arms.values()))  # the spec's (the first arm's): playground, OpenAPI, reloads
        self.metrics = Metrics(self.current.name)
        registry = get_registry(self.path.resolve().parent)
        factory = registry.session_stores.get(options.session_store)
        if factory is None:
            known = ", ".join(registry.session_stores) or "none"
            raise ValueError(f"unknown session store '{options.session_store}' (registered: {known})")
        self.sessions = factory(**options.session_options)
        self.log_store: Any = None
        if options.log_store is not None:
            log_factory = registry.log_stores.get(options.log_store)
            if log_factory is None:
                known = ", ".join(registry.log_stores) or "none"
                raise ValueError(f"unknown log store '{options.log_store}' (registered: {known})")
            self.log_store = log_factory(options.log_location, **options.log_options)
            prepare = getattr(self.log_store, "prepare", None)
            if callable(prepare):  # a folder that cannot be written fails here, not record by record later
                prepare()
        self.logs: LogWriter | None = None  # started with the server
        lo, hi = options.rating_range
        self.feedback_context = {"rating_range": (float(lo), float(hi))}
        self.in_flight = 0
        self.ready = False
        self.load_error: str | None = None
        self.reload_errors: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reload_lock: asyncio.Lock | None = None
        self.app: FastAPI | None = None

    def _mtime(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return None

    def _arm_graphs(self, graph: Any) -> dict[str | None, Any]:
        """Each arm's validated graph: ``graph`` (the spec as written) or a variant of the spec file, applied as
        ``llmrec eval --variants`` applies it. Raises SpecErrors (every arm's) or ExperimentError (an unknown arm).
        Reads files: call it off the event loop once serving."""
        exp = self.experiment
        if exp is None:
            return {None: graph}
        declared = variant_names(graph.document)
        graphs: dict[str | None, Any] = {}
        errors = []
        for arm in exp.arms:
            variant = arm_variant(arm, declared)
            if variant is None:
                graphs[arm] = graph
                continue
            built, errs, _ = check_variant(self.path, variant, str(self.path))
            if errs or built is None:
                errors.extend(errs)
            else:
                graphs[arm] = built
        if errors:
            raise SpecErrors(errors)
        return graphs

    def _services(self, graph: Any, graphs: dict[str | None, Any], mtime: int | None) -> dict[str | None, Service]:
        declared = variant_names(graph.document) if self.experiment is not None else []
        return {arm: Service(g, mtime, arm, None if arm is None else arm_variant(arm, declared))
                for arm, g in graphs.items()}

    async def _start_services(self, services: list[Service]) -> None:
        """Load the services' resources one after the other, each arm taking what an earlier one loaded and it
        can share (:func:`~llmrec.serve.experiments.shared_resources`: the same dataset is not loaded twice), then
        compute their provenance stamps."""
        earlier: list[tuple[Any, Any]] = []
        for svc in services:
            if earlier:
                shared = shared_resources(svc.graph, earlier)
                if shared:
                    svc.share(shared)
                    log.info("arm '%s' shares %s with an earlier arm", svc.arm, ", ".join(sorted(shared)))
            await svc.runtime.start()
            earlier.append((svc.graph, svc.runtime.resources))
        await asyncio.gather(*(svc.stamp_service() for svc in services))
        folder = stamp_folder(self.log_store) if self.log_store is not None else None
        if folder is not None:  # the stamps' components beside the log, for llmrec replay and eval --logged
            for svc in services:
                if svc.stamp is not None and await asyncio.to_thread(keep_stamp, svc.stamp, folder) is None:
                    log.warning("could not write the provenance stamp %s into %s", svc.stamp.id, folder)

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def startup(self) -> None:
        self._reload_lock = asyncio.Lock()
        if self.log_store is not None and self.logs is None:
            self.logs = LogWriter(self.log_store, max_pending=self.options.log_queue, counter=self.metrics.count_log)
        self._spawn(self._load(list(self.arms.values())))
        if self.options.reload_interval > 0:
            self._spawn(self._watch())
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):  # not the main thread, Windows
            pass

    async def shutdown(self) -> None:
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(svc.runtime.close() for svc in self.arms.values()))
        if self.logs is not None:  # what is queued is written, then the store closes (the file store fsyncs)
            await asyncio.to_thread(self.logs.close)
            self.logs = None
        self.ready = False
        self.metrics.ready.set(0)
        if self.tracing is not None and self.own_tracing:  # what is queued is exported
            await asyncio.to_thread(self.tracing.shutdown)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _load(self, services: list[Service]) -> None:
        started = time.perf_counter()
        try:
            await self._start_services(services)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.load_error = _describe(exc)
            log.error("spec '%s': resources failed to load: %s", services[0].name, self.load_error)
            return
        freeze_heap()
        self.ready = True
        self.metrics.ready.set(1)
        log.info("spec '%s' ready in %.2fs", services[0].name, time.perf_counter() - started)
        if self.experiment is not None:
            log.info("experiment '%s' (%s): arms %s", self.experiment.name, self.experiment.kind,
                     ", ".join(f"{s.arm} ({s.stamp.id if s.stamp else '?'})" for s in services))

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.path)
        self._spawn(self.reload(force=True))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.options.reload_interval)
            if self._mtime() != self.current.mtime and self._mtime() != getattr(self, "_seen_mtime", None):
                await self.reload()

    async def reload(self, force: bool = False) -> bool:
        """Validate the spec file again and, if it is valid and its resources load, serve it instead of the
        current one. A broken edit is logged and changes nothing. Returns whether the new spec is serving."""
        assert self._reload_lock is not None, "reload() needs startup() first"
        async with self._reload_lock:
            mtime = self._mtime()
            if not force and mtime == self.current.mtime:
                return False
            self._seen_mtime = mtime  # a broken version is not retried until the file changes again
            graphs = None
            try:
                graph, errors, _ = await asyncio.to_thread(check, self.path, str(self.path))
                if graph is not None and not errors:  # and every arm's variant of it
                    graphs = await asyncio.to_thread(self._arm_graphs, graph)
            except SpecErrors as exc:
                errors, graph = list(exc.errors), None
                self.reload_errors = [e.format() for e in errors]
            except Exception as exc:  # an unreadable file, a plugin that fails to import, an arm gone
                errors, graph = [], None
                self.reload_errors = [_describe(exc)]
            else:
                self.reload_errors = [e.format() for e in errors]
            if graph is None or errors or graphs is None:
                for line in self.reload_errors:
                    log.error("%s", line)
                log.error("%s: not reloaded (%d error%s); still serving the previous version", self.path,
                          len(self.reload_errors), "" if len(self.reload_errors) == 1 else "s")
                self.metrics.reloads.labels("invalid").inc()
                return False
            services = self._services(graph, graphs, mtime)
            try:
                await self._start_services(list(services.values()))
            except Exception as exc:
                self.reload_errors = [_describe(exc)]
                log.error("%s: not reloaded, resources failed to load: %s; still serving the previous version",
                          self.path, self.reload_errors[0])
                self.metrics.reloads.labels("failed").inc()
                await asyncio.gather(*(s.runtime.close() for s in services.values()))
                return False
            svc = next(iter(services.values()))
            old_arms, self.arms, self.current = self.arms, services, svc
            self.ready, self.load_error = True, None
            self.metrics.ready.set(1)
            if self.app is not None:
                self.app.openapi_schema = None
            self.metrics.reloads.labels("ok").inc()
            log.info("%s reloaded: spec '%s', %d nodes, provenance %s", self.path, svc.name, len(svc.graph.nodes),
                     svc.stamp.id if svc.stamp else "?")
            for old in old_arms.values():
                self._spawn(self._retire(old))
            return True

    @staticmethod
    async def _retire(old: Service) -> None:
        while old.active:
            await asyncio.sleep(0.05)
        await old.runtime.close()
        del old
        freeze_heap()  # the retired version's cycles are collected, the new one's objects frozen

    # -- request helpers ---------------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        key = self.options.api_key
        if not key:
            return
        given = request.headers.get("x-api-key")
        if given is None:
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        if given is None or not hmac.compare_digest(given.encode("utf-8", "replace"), key.encode("utf-8")):
            raise ApiError(401, "unauthorized", "a valid API key is required: send 'Authorization: Bearer KEY' "
                           "or 'X-API-Key: KEY'", headers={"WWW-Authenticate": "Bearer"})

    def admit(self, request: Request) -> None:
        """Take one of the max_concurrency slots for this request (released by the endpoint wrapper, or by a
        stream when it ends), or refuse: 503 before the spec is ready, 429 when every slot is taken."""
        if not self.ready:
            if self.load_error:
                raise ApiError(503, "not_ready", f"the spec's resources failed to load: {self.load_error}")
            raise ApiError(503, "not_ready", "resources are still loading; retry shortly", retry_after=1)
        if self.in_flight >= self.options.max_concurrency:
            raise ApiError(429, "overloaded", f"too many requests in progress (at most "
                           f"{self.options.max_concurrency}); retry shortly", retry_after=1)
        self.in_flight += 1
        request.state.admitted = True

    def release(self, request: Request) -> None:
        if getattr(request.state, "admitted", False):
            request.state.admitted = False
            self.in_flight -= 1

    async def read_json(self, request: Request) -> Any:
        limit = self.options.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, "invalid_body", "the Content-Length header is not a number")
            if int(length) > limit:
                raise ApiError(413, "body_too_large", f"the body has {int(length)} bytes; at most {limit} are "
                               "accepted")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", f"the body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return parse_json(b"".join(chunks))

    def session_id(self, request: Request) -> str | None:
        sid = request.headers.get("x-session-id") or request.query_params.get("session_id")
        if sid is None or sid == "":
            return None
        if not SESSION_ID.match(sid):
            raise ApiError(400, "invalid_session_id", "a session id is 1 to 128 letters, digits or ._:@-",
                           "session_id")
        return sid

    def request_id(self, request: Request) -> str:
        """The client's ``X-Request-Id`` (checked: 1 to 128 letters, digits or ._:@-), else a new one; kept on
        ``request.state`` so that every answer, errors too, carries it back."""
        rid = request.headers.get("x-request-id")
        if rid:
            if not REQUEST_ID.match(rid):
                raise ApiError(400, "invalid_request_id", "a request id is 1 to 128 letters, digits or ._:@-",
                               "X-Request-Id")
        else:
            rid = uuid.uuid4().hex
        request.state.request_id = rid
        return rid

    async def execute(self, svc: Service, data: Any, *, trace: bool = False, on_node: Any = None,
                      request_id: str | None = None) -> tuple[dict[str, Any], Any]:
        """One spec run: (the answer as JSON data, the run's trace); its errors as ApiError, its trace in the
        metrics. ``request_id`` is the run's id."""
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_body", f"a request must be a JSON object with this spec's inputs, "
                           f"got {_json_type(data)}")
        state = None
        if svc.keeps_state and "state" in data:  # the session's state (or the client's), beside the inputs
            state = data["state"]
            data = {k: v for k, v in data.items() if k != "state"}
        grounded = svc.grounded
        if grounded:
            metrics, user_cb = self.metrics, on_node

            def on_node(record: Any, value: Any) -> None:
                if record.node_id in grounded:
                    metrics.observe_grounded(record.node_id, value)
                if user_cb is not None:
                    user_cb(record, value)

        svc.active += 1
        self.metrics.in_flight.inc()
        try:
            result = await svc.runtime.run(data, run_id=request_id, deadline=self.options.deadline, on_node=on_node,
                                           state=state)
        except InputError as exc:
            raise ApiError(422, "invalid_input", str(exc), exc.field, errors=exc.errors) from None
        except RunError as exc:
            tid = None
            if exc.trace is not None:
                self.metrics.observe_trace(exc.trace, "failed")
                if self.tracing is not None:
                    tid = self.tracing.record_run(exc.trace, attributes=run_attributes(svc, request_id), error=exc)
            extra: dict[str, Any] = {"node": exc.node_id, "run_id": exc.run_id}
            if trace and exc.trace is not None:
                extra["trace"] = exc.trace.to_dict()
                if tid is not None:
                    extra["trace"]["trace_id"] = tid
            if isinstance(exc, DeadlineExceededError):
                raise ApiError(503, "deadline_exceeded", str(exc), **extra) from None
            raise ApiError(424, "node_failed", str(exc), **extra) from None
        finally:
            svc.active -= 1
            self.metrics.in_flight.dec()
        self.metrics.observe_trace(result.trace, "degraded" if result.degraded else "ok")
        answer = result.to_dict(trace=trace)
        if self.tracing is not None:
            tid = self.tracing.record_run(result.trace, attributes=run_attributes(svc, request_id))
            if trace:
                answer["trace"]["trace_id"] = tid
        return answer, result.trace

    async def run(self, svc: Service, data: Any, *, trace: bool = False, on_node: Any = None,
                  request_id: str | None = None, endpoint: str = "recommend", session_id: str | None = None,
                  experiment: dict[str, Any] | None = None) -> dict[str, Any]:
        """One spec run (:meth:`execute`); with a log store, the answer is queued as an impression (never waiting
        for the store), with ``experiment`` as its experiment record."""
        answer, run_trace = await self.execute(svc, data, trace=trace, on_node=on_node, request_id=request_id)
        if self.logs is not None and request_id is not None:
            self.log_impression(request_id, endpoint, svc.name, svc.stamp.id if svc.stamp else "", svc.variant,
                                data, answer, run_trace, session_id, experiment)
        return answer

    def log_impression(self, request_id: str, endpoint: str, spec: str, stamp_id: str, variant: str | None,
                       data: dict[str, Any], answer: dict[str, Any], run_trace: Any, session_id: str | None,
                       experiment: dict[str, Any] | None = None, teams: dict[str, list[str | None]] | None = None,
                       ) -> None:
        """Queue an answer's impression; ``teams`` (an interleaved answer: each merged output's arm per position,
        None for an item credited to neither) become the items' ``team``, and their propensity is unknown (the
        coin flips made the list)."""
        logs = self.logs
        if logs is None:
            return
        if isinstance(data, dict) and "state" in data:  # the session state is not a request input
            data = {k: v for k, v in data.items() if k != "state"}
        try:  # built here, not on the writer thread, so that the answer's objects can die young
            record = impression_record(request_id, time.time(), endpoint, spec, stamp_id, variant, data,
                                       answer["outputs"], answer["degraded"], run_trace, session_id,
                                       trace_id=self.tracing.trace_id() if self.tracing is not None else None)
            if teams is not None:
                mark_teams(record, teams)
            if experiment is not None:
                record["experiment"] = experiment
        except Exception as exc:  # never the request's failure
            log.warning("an impression could not be recorded: %s", _describe(exc))
            self.metrics.count_log("impressions", "failed", 1)
        else:
            logs.impression(record)

    # -- experiments -------------------------------------------------------------------------------------
    def forced_arm(self, request: Request) -> str | None:
        """The arm a ``?variant=ARM`` override asks for: only where the operator allowed overrides."""
        arm = request.query_params.get("variant")
        if arm is None:
            return None
        if self.experiment is None:
            raise ApiError(400, "no_experiment", "this server runs no experiment: there is no variant to choose",
                           "variant")
        if not self.options.experiment_override:
            raise ApiError(403, "override_off", "?variant= overrides are off on this server (the operator turns "
                           "them on with --experiment-override)", "variant")
        if arm not in self.arms:
            raise ApiError(422, "invalid_variant", f"no arm '{arm}' in experiment '{self.experiment.name}' (arms: "
                           f"{', '.join(str(a) for a in self.arms)})", "variant")
        return arm

    def route(self, data: Any, request_id: str, session_id: str | None = None, forced: str | None = None
              ) -> tuple[list[Service], dict[str, Any] | None, dict[str, str]]:
        """Which services answer a request: (services, the experiment record for its impression, the headers to
        send). Without an experiment, the spec's; A/B: the arm of the request's unit; interleaving: both arms."""
        exp = self.experiment
        if exp is None:
            svc = self.current
            return [svc], None, svc.headers
        inputs = data if isinstance(data, dict) else {}
        unit_kind, unit = assignment_unit(inputs, session_id, request_id)
        if forced is not None or exp.kind == "ab":
            if forced is not None:
                arm, bucket = forced, None
            else:
                arm, bucket = exp.assign(unit)
            svc = self.arms[arm]
            return [svc], exp.arm_record(arm, bucket, unit_kind, forced is not None), svc.headers
        a, b = (self.arms[arm] for arm in exp.arms)
        record = exp.interleave_record(unit_kind, {str(s.arm): s.stamp.id if s.stamp else "" for s in (a, b)})
        return [a, b], record, _pair_headers(a, b)

    async def answer(self, data: Any, *, trace: bool = False, on_node: Any = None, request_id: str,
                     endpoint: str = "recommend", session_id: str | None = None, forced: str | None = None,
                     routed: tuple[list[Service], dict[str, Any] | None, dict[str, str]] | None = None,
                     ) -> tuple[dict[str, Any], dict[str, str]]:
        """A request's answer and the headers that say what produced it, through :meth:`route` (or ``routed``,
        its result taken earlier): one service's run, or an interleaving of two."""
        services, record, headers = routed or self.route(data, request_id, session_id, forced)
        if len(services) == 1:
            return await self.run(services[0], data, trace=trace, on_node=on_node, request_id=request_id,
                                  endpoint=endpoint, session_id=session_id, experiment=record), headers
        assert record is not None and self.experiment is not None
        return await self._interleave(services, data, record, trace=trace, on_node=on_node, request_id=request_id,
                                      endpoint=endpoint, session_id=session_id)

    async def _interleave(self, services: list[Service], data: Any, record: dict[str, Any], *, trace: bool,
                          on_node: Any, request_id: str, endpoint: str, session_id: str | None,
                          ) -> tuple[dict[str, Any], dict[str, str]]:
        """Both arms at once; their item lists merged by team draft (llmrec/serve/experiments.py). When one arm
        fails the other's answer is served alone (its impression says so: ``fallback``); when both fail, A's
        error is the answer."""
        exp = self.experiment
        assert exp is not None
        a, b = services

        def node_cb(arm: str | None) -> Any:
            if on_node is None:
                return None
            return lambda record_, value: on_node(record_, value, arm)

        runs = await asyncio.gather(
            *(self.execute(s, data, trace=trace, on_node=node_cb(s.arm), request_id=request_id) for s in (a, b)),
            return_exceptions=True)
        failed = [r for r in runs if isinstance(r, BaseException)]
        for r in failed:
            if not isinstance(r, ApiError):
                raise r
        if len(failed) == 2:
            raise failed[0]
        spec = a.name
        if failed:
            svc, (answer, run_trace) = next((s, r) for s, r in zip((a, b), runs) if not isinstance(r, BaseException))
            log.warning("interleaving: arm '%s' failed (%s); arm '%s' answered alone",
                        (b if svc is a else a).arm, failed[0].message, svc.arm)
            self.log_impression(request_id, endpoint, spec, svc.stamp.id if svc.stamp else "", svc.variant, data,
                                answer, run_trace, session_id, {**record, "fallback": svc.arm})
            return answer, svc.headers
        (answer_a, _), (answer_b, _) = runs  # type: ignore[misc]
        outputs, teams, flips = interleave_outputs(answer_a["outputs"], answer_b["outputs"],
                                                   lambda output: exp.rng(request_id, output))
        answer: dict[str, Any] = {**answer_a, "outputs": outputs,
                                  "degraded": bool(answer_a["degraded"] or answer_b["degraded"])}
        falls = [{**f, "arm": s.arm} for s, ans in ((a, answer_a), (b, answer_b)) for f in ans.get("fallbacks") or ()]
        if falls:
            answer["fallbacks"] = falls
        if trace:
            answer["trace"] = {str(a.arm): answer_a.get("trace"), str(b.arm): answer_b.get("trace")}
        if self.logs is not None:
            arm_of = {"A": str(a.arm), "B": str(b.arm)}
            self.log_impression(request_id, endpoint, spec, "+".join(record["provenance"].values()), None, data,
                                answer, None, session_id, {**record, "flips": flips},
                                {name: [arm_of.get(t) if t else None for t in ts] for name, ts in teams.items()})
        return answer, _pair_headers(a, b)

    def feedback_events(self, data: Any) -> list[FeedbackEvent]:
        """A feedback body (one event, a JSON array of them, or ``{"events": [...]}``) -> validated events; every
        mistake a 4xx naming the field (``value``, ``0.type``, ``events.2.item_id``)."""
        prefix = ""
        if isinstance(data, dict) and "events" in data:
            if set(data) - {"events"}:
                raise ApiError(400, "invalid_body", 'a batch of feedback is {"events": [{...}, ...]} (or a JSON array '
                               "of events)", "events")
            events, prefix = data["events"], "events."
            if not isinstance(events, list):
                raise ApiError(400, "invalid_body", "'events' must be a list of feedback events", "events")
        elif isinstance(data, list):
            events = data
        elif isinstance(data, dict):
            events = [data]
        else:
            raise ApiError(400, "invalid_body", f"feedback is a JSON object (or a list of them), got "
                           f"{_json_type(data)}")
        if not events:
            raise ApiError(400, "invalid_body", "no feedback events in the body", prefix.rstrip(".") or None)
        if len(events) > self.options.max_batch:
            raise ApiError(413, "batch_too_large", f"{len(events)} feedback events in one call; at most "
                           f"{self.options.max_batch}", prefix.rstrip(".") or None)
        single = len(events) == 1 and isinstance(data, dict) and not prefix
        out, errors = [], []
        for i, event in enumerate(events):
            where = "" if single else f"{prefix}{i}"
            if not isinstance(event, dict):
                errors.append({"field": where or None, "message": f"a feedback event is a JSON object, got "
                                                                  f"{_json_type(event)}"})
                continue
            try:
                out.append(FeedbackEvent.model_validate(event, context=self.feedback_context))
            except ValidationError as exc:
                for e in exc.errors(include_url=False):
                    loc = ".".join(str(p) for p in e["loc"])
                    name = f"{where}.{loc}" if where and loc else (where or loc or None)
                    if e["type"] == "extra_forbidden":
                        msg = f"unknown field (feedback fields are: {', '.join(FeedbackEvent.model_fields)})"
                    else:
                        msg = e["msg"].removeprefix("Value error, ")
                    errors.append({"field": name, "message": msg})
        if errors:
            first = errors[0]
            raise ApiError(422, "invalid_feedback", f"feedback '{first['field']}': {first['message']}",
                           first["field"], errors=errors)
        return out

    def session_state(self, svc: Service, data: dict[str, Any], session: dict[str, Any], sid: str | None,
                      kept: bool) -> tuple[dict[str, Any], dict[str, Any], str | None]:
        """The request with the session's state beside its inputs, the session, and a notice for the client: a
        session id the store does not know (new, or expired) starts from the schema's defaults, and so does a
        saved state that no longer fits the schema (the spec changed): never a 500, never silently."""
        if sid is None or not kept:
            return data, session, None
        if "state" not in session:
            note = None if not session.get("turns") else "the session had no saved state: it starts from the defaults"
            if not session:
                note = (f"no session '{sid}' was found (it is new, or it expired): a new conversation starts from "
                        "the state's defaults")
            return data, session, note
        try:
            current = svc.runtime.validate_state(session["state"])
        except InputError as exc:
            log.warning("session %s: its saved state does not fit the spec's state schema (%s); reset to the "
                        "defaults", sid, exc)
            return data, {k: v for k, v in session.items() if k != "state"}, (
                f"the session's saved state no longer fits the spec's state schema ({exc}): it was reset to the "
                "defaults")
        return {**data, "state": current}, session, None

    async def load_session(self, sid: str | None) -> dict[str, Any]:
        if sid is None:
            return {}
        state = await self.sessions.load(sid)
        return state if isinstance(state, dict) else {}

    async def load_session_kept(self, sid: str | None) -> tuple[dict[str, Any], bool]:
        """``load_session`` that never raises: a store that fails (Redis down) gives an empty session and False."""
        try:
            return await self.load_session(sid), True
        except Exception as exc:
            return {}, self.session_failed("load", exc)

    def session_failed(self, what: str, exc: Exception) -> bool:
        """Log a session store failure (a store's message masks its secrets); False: the session was not kept."""
        log.warning("session store: %s failed (%s: %s); answering without the session", what,
                    type(exc).__name__, exc)
        return False

    async def save_turn(self, sid: str, state: dict[str, Any], inputs: dict[str, Any], answer: dict[str, Any]
                        ) -> int:
        turns = list(state.get("turns") or [])
        turns.append({"inputs": inputs, "outputs": answer.get("outputs"), "at": round(time.time(), 3)})
        number = int(state.get("turn_count", len(turns) - 1)) + 1
        turns = turns[-self.options.session_turns:]
        limit = self.options.session_max_bytes
        sizes = [_json_size(t) for t in turns]
        if sizes[-1] + 2 > limit:  # this turn alone is over the limit: its time is kept, not its data
            turns[-1] = {"at": turns[-1]["at"], "omitted": f"over the session limit of {limit} bytes"}
            sizes[-1] = _json_size(turns[-1])
        total = sum(sizes) + len(sizes) + 1  # and the list's brackets and commas
        while len(turns) > 1 and total > limit:  # then the oldest turns go
            turns.pop(0)
            total -= sizes.pop(0) + 1
        state = {**state, "turns": turns, "turn_count": number}
        await self.sessions.save(sid, state, self.options.session_ttl)
        self.metrics.observe_sessions(self.sessions)  # fresh in every worker, whichever answers /metrics
        return number


def _pair_headers(a: Service, b: Service) -> dict[str, str]:
    """An interleaved answer's headers: both arms' provenance ids and names, joined by '+'."""
    return {"X-Llmrec-Provenance": f"{a.stamp.id if a.stamp else ''}+{b.stamp.id if b.stamp else ''}",
            "X-Llmrec-Variant": f"{a.arm}+{b.arm}"}


def run_attributes(svc: Service, request_id: str | None) -> dict[str, Any]:
    """A served run's span attributes beyond its trace's: provenance id, variant, experiment arm, request id."""
    return {"llmrec.provenance": svc.stamp.id if svc.stamp else None, "llmrec.variant": svc.variant,
            "llmrec.arm": svc.arm, "llmrec.request_id": request_id}


def freeze_heap() -> None:
    """Move what is alive now out of the cyclic garbage collector's view (``gc.freeze``), after a collection.

    Once a spec has loaded, its datasets, models, indexes and the plugin registry live as long as the server; every
    collection that a request's short-lived objects trigger would walk them all. Measured under load (cProfile of
    `llmrec serve` and of the handwritten app in benchmarks/serve_load.py): the same node code ran 2.5x slower per
    call in llmrec's process, collections counted in. Frozen objects are still freed by reference counting; after
    a reload the heap is thawed, collected (the retired version's cycles) and frozen again. Off when the
    collector is disabled (an application that manages it itself)."""
    if not gc.isenabled():
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def parse_json(body: bytes) -> Any:
    """Bytes -> JSON value, every failure a 400 that says what is wrong."""
    if not body.strip():
        raise ApiError(400, "invalid_json", "the body is empty: send a JSON object with this spec's inputs")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_encoding", f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc.msg} at line {exc.lineno} "
                       f"column {exc.colno}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(text):
        where = _lone_surrogate(data, ())
        if where is not None:
            raise ApiError(400, "invalid_unicode", "a string holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)",
                           ".".join(where) or None)
    return data


def _lone_surrogate(value: Any, path: tuple[str, ...]) -> tuple[str, ...] | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _lone_surrogate(k, path + ("<key>",)) or _lone_surrogate(v, path + (str(k),))
            if found is not None:
                return found if found[-1:] != ("<key>",) else path
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _lone_surrogate(v, path + (str(i),))
            if found is not None:
                return found
    return None


def _json_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (what a session store keeps)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8"))


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _describe(exc: BaseException) -> str:
    text = getattr(exc, "format", None)
    if callable(text) and not isinstance(exc, type):
        try:
            return str(text())
        except Exception:
            pass
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in _TRUE


def _error_response(exc: ApiError, server: Server, headers: dict[str, str] | None = None) -> Response:
    server.metrics.errors.labels(exc.type).inc()
    extra = dict(exc.extra)
    hdrs = dict(headers or {})
    hdrs.update(extra.pop("headers", None) or {})
    if "retry_after" in extra:
        hdrs["Retry-After"] = str(extra.pop("retry_after"))
    body = {"error": {"type": exc.type, "message": exc.message, "field": exc.field, **extra}}
    return _json(body, exc.status, hdrs)


# -- the app ---------------------------------------------------------------------------------------------------


def create_app(options: ServeOptions, graph: Any | None = None, tracing: Any = None) -> FastAPI:
    """The FastAPI app serving ``options.spec`` (validated now: raises SpecErrors when it has errors).
    ``tracing``: a :class:`llmrec.telemetry.Tracing` to trace with (default: as ``options.otel`` says)."""
    from contextlib import asynccontextmanager

    server = Server(options, graph, tracing)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        await server.startup()
        try:
            yield
        finally:
            await server.shutdown()

    svc0 = server.current
    app = FastAPI(title=f"llmrec: {svc0.name}", description=svc0.graph.spec.description or "",
                  version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None)
    _offline_docs(app)
    app.state.server = server
    server.app = app
    page = PLAYGROUND.read_text(encoding="utf-8")
    error_responses: dict[int | str, dict[str, Any]] = {
        s: {"model": ErrorBody, "description": d} for s, d in (
            (400, "Invalid JSON, not an object, bad session id"), (401, "Missing or wrong API key"),
            (413, "Body too large"), (422, "Inputs that do not match the spec"), (424, "A node failed"),
            (429, "Too many requests in progress"), (503, "Not ready, or the deadline was exceeded"))}

    async def timed(endpoint: str, request: Request, handler: Any) -> Response:
        started = time.perf_counter()
        tracing = server.tracing
        if tracing is not None:  # the request's span, current while it is answered (a caller's traceparent continued)
            path = request.url.path
            span, token = tracing.start_request(f"{request.method} {path}", request.headers, {
                "http.request.method": request.method, "http.route": path, "url.path": path,
                "llmrec.endpoint": endpoint})
        try:
            response = await handler(request)
        except ApiError as exc:
            response = _error_response(exc, server)
        except ClientDisconnect:  # the client went away mid-request: not a server error (nginx's 499)
            log.info("client disconnected on %s", request.url.path)
            response = _error_response(ApiError(499, "client_disconnected", "the client closed the connection"),
                                       server)
        except Exception:  # a bug: answered as JSON, logged with its traceback, never sent to the client
            log.exception("internal error on %s", request.url.path)
            response = _error_response(ApiError(500, "internal", "internal error (logged on the server)"), server)
        finally:
            if not getattr(request.state, "streaming", False):
                server.release(request)
        rid = getattr(request.state, "request_id", None)
        if rid is not None and "x-request-id" not in response.headers:  # errors too: a 424 names it as run_id
            response.headers["X-Request-Id"] = rid
        elapsed = time.perf_counter() - started
        server.metrics.observe_request(endpoint, response.status_code, elapsed)
        if log.isEnabledFor(logging.DEBUG):  # the request line (with tracing on, its trace id is appended)
            log.debug("%s %s %d %.1fms request_id=%s", request.method, request.url.path, response.status_code,
                      elapsed * 1000, rid or "-")
        if tracing is not None:
            tid = tracing.trace_id()
            if tid is not None:
                response.headers[TRACE_ID_HEADER] = tid
            tracing.end_request(span, token, response.status_code, {"llmrec.request_id": rid} if rid else None)
        return response

    async def recommend(request: Request) -> Response:
        server.authorize(request)
        server.admit(request)
        rid = server.request_id(request)
        data = await server.read_json(request)
        sid = server.session_id(request)
        forced = server.forced_arm(request)
        routed = server.route(data, rid, sid, forced)  # the arm (or arms) that answer, before history is added
        svc = routed[0][0]
        state, kept = await server.load_session_kept(sid)
        if sid is not None and svc.history_input and isinstance(data, dict) and "history" not in data:
            data = {**data, "history": [{"inputs": t.get("inputs"), "outputs": t.get("outputs")}
                                        for t in state.get("turns", [])]}
        notice = None
        if svc.keeps_state and isinstance(data, dict) and "state" not in data:
            data, state, notice = server.session_state(svc, data, state, sid, kept)
        answer, headers = await server.answer(data, trace=_flag(request, "trace"), request_id=rid, session_id=sid,
                                              routed=routed)
        if notice is not None:
            answer["notice"] = notice
        if sid is not None:
            given = {k: v for k, v in data.items() if k not in ("history", "state")}
            if "state" in answer:
                state = {**state, "state": answer["state"]}
            answer["session_id"] = sid
            try:
                answer["turn"] = await server.save_turn(sid, state, given, answer)
            except Exception as exc:  # the store is down (Redis): the answer stands, the turn is not kept
                kept = server.session_failed("save", exc)
            if not kept:  # said in the body and a header: the next turn will not see this one
                answer["session_kept"] = False
                headers = {**headers, "X-Llmrec-Session": "not-kept"}
        return _json(answer, headers={"X-Request-Id": rid, **headers})

    async def batch(request: Request) -> Response:
        server.authorize(request)
        server.admit(request)
        given_id = request.headers.get("x-request-id")
        base = server.request_id(request) if given_id else None  # a client's id: its requests are ID-0, ID-1, ...
        data = await server.read_json(request)
        items = data.get("requests") if isinstance(data, dict) else data
        if not isinstance(items, list) or (isinstance(data, dict) and set(data) - {"requests"}):
            raise ApiError(400, "invalid_body", 'a batch is {"requests": [{...}, ...]} (or a JSON array of '
                           "requests)", "requests")
        if len(items) > options.max_batch:
            raise ApiError(413, "batch_too_large", f"{len(items)} requests in one batch; at most "
                           f"{options.max_batch}", "requests")
        svc, trace = server.current, _flag(request, "trace")
        forced = server.forced_arm(request)
        arms = list(server.arms.values())
        # a spec of inline nodes only does no I/O: a wave of a batch's requests at once, so that its batchable
        # nodes (llmrec/runtime/batch.py) see them together
        inline = all(s.runtime.inline_only for s in arms)
        gate = asyncio.Semaphore(WAVE if inline else options.batch_concurrency)
        experiment = server.experiment is not None

        async def one(i: int, item: Any) -> dict[str, Any]:
            rid = f"{base}-{i}" if base is not None else uuid.uuid4().hex
            async with gate:
                try:
                    if not experiment:
                        return {"status": 200, "request_id": rid,
                                **await server.run(svc, item, trace=trace, request_id=rid, endpoint="batch")}
                    answer, headers = await server.answer(item, trace=trace, request_id=rid, endpoint="batch",
                                                          forced=forced)
                    return {"status": 200, "request_id": rid, "variant": headers.get("X-Llmrec-Variant"),
                            "provenance": headers.get("X-Llmrec-Provenance"), **answer}
                except ApiError as exc:
                    server.metrics.errors.labels(exc.type).inc()
                    return {"status": exc.status, "request_id": rid, **exc.body()}

        with batching():
            results = await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        # with an experiment each result names its own arm and provenance; the batch as a whole has none
        return _json({"results": results, "ok": sum(r["status"] == 200 for r in results), "count": len(results)},
                     headers=None if experiment else svc.headers)

    async def stream(request: Request) -> Response:
        server.authorize(request)
        server.admit(request)
        rid = server.request_id(request)
        data = await server.read_json(request)
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_body", f"a request must be a JSON object with this spec's inputs, "
                           f"got {_json_type(data)}")
        trace = _flag(request, "trace")
        routed = server.route(data, rid, None, server.forced_arm(request))
        svc = routed[0][0]
        try:
            svc.runtime.validate_inputs(data)  # a bad request is a 4xx before the stream starts
        except InputError as exc:
            raise ApiError(422, "invalid_input", str(exc), exc.field, errors=exc.errors) from None
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        tracing = server.tracing
        parent = tracing.current_context() if tracing is not None else None  # the run outlives the request's span

        def on_node(record: Any, value: Any, arm: str | None = None) -> None:
            queue.put_nowait(("node", record.to_dict() if arm is None else {**record.to_dict(), "arm": arm}))

        async def run() -> None:
            if tracing is not None:
                tracing.attach(parent)  # this task's own context: nothing to detach
            try:
                answer, _ = await server.answer(data, trace=trace, on_node=on_node, request_id=rid,
                                                endpoint="stream", routed=routed)
                queue.put_nowait(("result", {**answer, "request_id": rid}))
            except ApiError as exc:
                server.metrics.errors.labels(exc.type).inc()
                queue.put_nowait(("error", {"status": exc.status, **exc.body()}))
            except Exception:
                log.exception("internal error in a stream")
                queue.put_nowait(("error", {"status": 500, **ApiError(500, "internal", "internal error").body()}))

        async def events() -> Any:
            task = asyncio.get_running_loop().create_task(run())
            try:
                while True:
                    kind, payload = await queue.get()
                    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)
                    yield f"event: {kind}\ndata: {text}\n\n".encode("utf-8")
                    if kind != "node":
                        return
            finally:
                server.release(request)
                if not task.done():
                    task.cancel()

        request.state.streaming = True  # the slot is held until the stream ends
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-Id": rid,
                                          **routed[2]})

    async def feedback(request: Request) -> Response:
        server.authorize(request)
        logs = server.logs
        learning = [svc.runtime for svc in server.arms.values() if svc.runtime.learners]  # online learners
        if logs is None and not learning:
            raise ApiError(404, "logging_off", "this server keeps no log and no node of its spec learns from "
                           "feedback, so it takes none: start it with --log-dir DIR or --log-store NAME:WHERE")
        server.admit(request)
        data = await server.read_json(request)
        events = server.feedback_events(data)
        received = time.time()
        if logs is not None and not logs.feedback([feedback_record(e, received) for e in events]):
            raise ApiError(503, "log_overloaded", f"the log queue is full ({server.options.log_queue} records "
                           "waiting); retry shortly", retry_after=1)
        for e in events:
            server.metrics.feedback.labels(e.type).inc()
        for runtime in learning:  # each arm's learners act only on the request ids they answered
            await runtime.feedback(events)
        return _json({"accepted": len(events)}, 202)

    async def provenance(request: Request) -> Response:
        server.authorize(request)
        svc = server.current
        arm = request.query_params.get("arm")
        if arm is not None:
            if arm not in server.arms or server.experiment is None:
                known = ", ".join(str(a) for a in server.arms) if server.experiment is not None else "none"
                raise ApiError(404, "unknown_arm", f"no arm '{arm}' on this server (arms: {known})", "arm")
            svc = server.arms[arm]
        if svc.stamp is None:
            raise ApiError(503, "not_ready", "resources are still loading; retry shortly", retry_after=1)
        return _json(svc.stamp.to_dict(), headers=svc.headers)

    async def experiment_info(request: Request) -> Response:
        server.authorize(request)
        exp = server.experiment
        if exp is None:
            raise ApiError(404, "no_experiment", "this server runs no experiment (start it with --experiment "
                           "ab:ARM,ARM or interleave:ARM,ARM)")
        weights = dict(zip(exp.arms, exp.weights)) if exp.kind == "ab" else {}
        arms = [{"arm": a, "variant": s.variant, "weight": weights.get(str(a)),
                 "provenance": s.stamp.id if s.stamp else None} for a, s in server.arms.items()]
        return _json({"name": exp.name, "kind": exp.kind, "salt": exp.salt, "seed": exp.seed,
                      "override": server.options.experiment_override, "arms": arms})

    async def spec_info(request: Request) -> Response:
        server.authorize(request)
        return _json(server.current.describe())

    async def metrics(request: Request) -> Response:
        server.authorize(request)
        server.metrics.observe_sessions(server.sessions)
        server.metrics.observe_log(server.logs)
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    @app.post("/v1/recommend", responses={200: {"description": "The spec's outputs"}, **error_responses},
              summary="Run the spec for one request")
    async def recommend_endpoint(request: Request) -> Response:
        """The spec's inputs as a JSON object -> its outputs. `?trace=true` adds the per-node trace; a session
        id (header `X-Session-Id` or `?session_id=`) keeps each turn (and fills a `history` input)."""
        return await timed("recommend", request, recommend)

    @app.post("/v1/recommend/batch", responses={200: {"description": "One result or error per request"},
                                                **error_responses}, summary="Run many requests in one call")
    async def batch_endpoint(request: Request) -> Response:
        """`{"requests": [{...}, ...]}` -> `{"results": [...]}`, each `{"status": 200, "outputs": ...}` or
        `{"status": 4xx, "error": {...}}`, in order."""
        return await timed("batch", request, batch)

    @app.post("/v1/recommend/stream", responses={200: {"description": "text/event-stream"}, **error_responses},
              summary="Run one request, streaming an event per finished node")
    async def stream_endpoint(request: Request) -> Response:
        """Server-sent events: `event: node` per node as it finishes (its trace record), then `event: result`
        (as /v1/recommend answers) or `event: error`."""
        return await timed("stream", request, stream)

    @app.post("/v1/feedback", status_code=202, responses={202: {"description": '{"accepted": N}'},
                                                          **error_responses, 404: {"model": ErrorBody, "description":
                                                                                   "The server keeps no log"}},
              summary="Record feedback about an answer (click, purchase, rating, dismissal)")
    async def feedback_endpoint(request: Request) -> Response:
        """One event `{"request_id", "item_id", "type", ...}`, a JSON array of them, or `{"events": [...]}`;
        `request_id` is the `X-Request-Id` of the answer. 202 once queued for the log store."""
        return await timed("feedback", request, feedback)

    @app.get("/v1/provenance", summary="What produced this spec's answers: the provenance stamp's components")
    async def provenance_endpoint(request: Request) -> Response:
        return await timed("provenance", request, provenance)

    @app.get("/v1/experiment", summary="The online experiment this server runs: kind, arms, weights, provenance")
    async def experiment_endpoint(request: Request) -> Response:
        return await timed("experiment", request, experiment_info)

    @app.get("/healthz", summary="Alive")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", summary="Ready: 200 once resources are loaded, 503 before")
    async def readyz() -> Response:
        body: dict[str, Any] = {"ready": server.ready, "spec": server.current.name}
        if server.experiment is not None:
            body["experiment"] = {"name": server.experiment.name, "kind": server.experiment.kind,
                                  "arms": list(server.experiment.arms)}
        if server.load_error:
            body["error"] = server.load_error
        if server.reload_errors:
            body["reload_errors"] = server.reload_errors
        return _json(body, 200 if server.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_endpoint(request: Request) -> Response:
        return await timed("metrics", request, metrics)

    @app.get("/v1/spec", summary="The spec's inputs and graph (what the playground shows)")
    async def spec_endpoint(request: Request) -> Response:
        return await timed("spec", request, spec_info)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(ApiError(exc.status_code, kind, str(exc.detail)), server, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s", request.url.path)
        return _error_response(ApiError(500, "internal", "internal error (logged on the server)"), server)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi(app, server.current)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI 5) and ``/redoc`` from the assets the fastapi-offline package ships, not a CDN: both
    work offline."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/static/docs", StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title}: API",
                                   swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css", swagger_favicon_url="data:,")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> Response:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title}: API",
                              redoc_js_url="/static/docs/redoc.standalone.js", redoc_favicon_url="data:,",
                              with_google_fonts=False)


def _openapi(app: FastAPI, svc: Service) -> dict[str, Any]:
    """FastAPI's schema with this spec's request and response models filled in."""
    from fastapi.openapi.utils import get_openapi
    from pydantic.json_schema import models_json_schema

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    batch = create_model(f"{svc.request_model.__name__}Batch", requests=(list[svc.request_model], ...))
    keys, defs = models_json_schema(
        [(svc.request_model, "validation"), (svc.response_model, "serialization"), (batch, "validation")],
        ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(defs.get("$defs", {}))
    req = keys[(svc.request_model, "validation")]
    resp = keys[(svc.response_model, "serialization")]
    body = components.get(str(req.get("$ref", "")).rsplit("/", 1)[-1])
    if svc.keeps_state and isinstance(body, dict):  # a client without a session may carry the state itself
        body.setdefault("properties", {})["state"] = {
            "type": "object", "description": "The session state (a spec with 'state:'); default: the session's, "
                                             "else the state schema's defaults. Returned updated as 'state'."}
    for path, body_schema in (("/v1/recommend", req), ("/v1/recommend/stream", req),
                              ("/v1/recommend/batch", keys[(batch, "validation")])):
        op = schema["paths"][path]["post"]
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_schema}}}
        if path != "/v1/recommend/batch":
            op["parameters"] = [
                {"name": "trace", "in": "query", "required": False, "schema": {"type": "boolean"},
                 "description": "Add the per-node trace."},
                {"name": "session_id", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "Session id (or the X-Session-Id header)."},
            ]
    schema["paths"]["/v1/recommend"]["post"]["responses"]["200"]["content"] = {
        "application/json": {"schema": resp}}
    event = FeedbackEvent.model_json_schema(ref_template="#/components/schemas/{model}")
    components["FeedbackEvent"] = event
    ref = {"$ref": "#/components/schemas/FeedbackEvent"}
    schema["paths"]["/v1/feedback"]["post"]["requestBody"] = {"required": True, "content": {"application/json": {
        "schema": {"anyOf": [ref, {"type": "array", "items": ref},
                             {"type": "object", "properties": {"events": {"type": "array", "items": ref}},
                              "required": ["events"], "additionalProperties": False}]}}}}
    return schema


def _version() -> str:
    return llmrec_version()


def configure_logging(level: str) -> None:
    """Send the ``llmrec.serve`` log (ready, reloads, refused reloads) to stderr like uvicorn's own lines."""
    logger = logging.getLogger("llmrec.serve")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def create_app_from_env() -> FastAPI:
    """The app factory ``uvicorn --factory`` calls in each worker (``llmrec serve --workers N``)."""
    options = ServeOptions.from_env()
    configure_logging(options.log_level)
    return create_app(options)
