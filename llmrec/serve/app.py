"""The HTTP service of one spec: a FastAPI app built from a validated :class:`~llmrec.graph.build.Graph`.

    app = create_app(ServeOptions(spec=Path("specs/quickstart.yaml")))   # validates; raises SpecErrors

Endpoints: ``POST /v1/recommend`` (``/batch``, ``/stream``), ``POST /v1/feedback``, ``GET /healthz``, ``/readyz``,
``/metrics``, ``/v1/spec``, ``/v1/provenance`` and the playground at ``/``. Every answer carries its request id
(``X-Request-Id``) and the provenance id of the spec that produced it (``X-Llmrec-Provenance``); with a log store
(``--log-dir``, ``--log-store``) every answer is logged as an impression and feedback is accepted
(llmrec/serve/logs.py). Request bodies are read and checked here (size, UTF-8, JSON, an object,
then the spec's inputs), so every mistake is a 4xx ``{"error": {"type", "message", "field"}}`` and nothing a
client sends can produce a traceback. Resources load in the background after startup: ``/readyz`` is 503 until
they have. The spec file is watched (and reloaded on SIGHUP); a new version replaces the old one only once it
validates and its resources have loaded.
"""

from __future__ import annotations

import asyncio
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
from ..trust import grant
from .logs import FeedbackEvent, LogWriter, Stamp, feedback_record, impression_record, provenance_stamp
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

    def __init__(self, graph: Any, mtime: int | None = None) -> None:
        self.graph = graph
        self.runtime = Runtime(graph)
        self.mtime = mtime
        self.active = 0  # requests using this service now (an old version closes when they are done)
        self.grounded = frozenset(n for n, b in graph.nodes.items() if b.cls.reports.grounding)
        history = graph.spec.inputs.get("history")
        self.history_input = history is not None and history.type == "array"
        self.request_model = graph.request_model
        self.response_model = _response_model(graph)
        self.created = time.time()
        self.variant: str | None = None  # the variant served (A/B variants: later); None is the spec as written
        self.stamp: Stamp | None = None  # set once its resources have loaded (stamp_service)
        self.headers: dict[str, str] = {}  # sent with every answer: X-Llmrec-Provenance

    async def stamp_service(self) -> None:
        """Compute the provenance stamp once (files and datasets are hashed in a thread, off the loop)."""
        try:
            stamp = await asyncio.to_thread(provenance_stamp, self.graph, dict(self.runtime.resources))
        except Exception as exc:  # hashing never stops a spec from serving: the stamp says what failed
            log.warning("spec '%s': no provenance stamp: %s", self.name, _describe(exc))
            stamp = Stamp("unknown", {"spec_name": self.name, "error": _describe(exc)})
        self.stamp = stamp
        self.headers = {"X-Llmrec-Provenance": stamp.id}

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
                "history_from_session": self.history_input}


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
    )


# -- the server -----------------------------------------------------------------------------------------------


class Server:
    """State shared by the endpoints: the current service, sessions, limits and metrics."""

    def __init__(self, options: ServeOptions, graph: Any | None = None) -> None:
        self.options = options
        self.path = Path(options.spec)
        if options.trust:
            grant(self.path.resolve().parent)
        if graph is None:
            graph, errors, _ = check(self.path, str(self.path))
            if errors or graph is None:
                raise SpecErrors(errors)
        self.current = Service(graph, self._mtime())
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

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def startup(self) -> None:
        self._reload_lock = asyncio.Lock()
        if self.log_store is not None and self.logs is None:
            self.logs = LogWriter(self.log_store, max_pending=self.options.log_queue, counter=self.metrics.count_log)
        self._spawn(self._load(self.current))
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
        await self.current.runtime.close()
        if self.logs is not None:  # what is queued is written, then the store closes (the file store fsyncs)
            await asyncio.to_thread(self.logs.close)
            self.logs = None
        self.ready = False
        self.metrics.ready.set(0)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _load(self, svc: Service) -> None:
        started = time.perf_counter()
        try:
            await svc.runtime.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.load_error = _describe(exc)
            log.error("spec '%s': resources failed to load: %s", svc.name, self.load_error)
            return
        await svc.stamp_service()
        self.ready = True
        self.metrics.ready.set(1)
        log.info("spec '%s' ready in %.2fs", svc.name, time.perf_counter() - started)

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
            try:
                graph, errors, _ = await asyncio.to_thread(check, self.path, str(self.path))
            except Exception as exc:  # an unreadable file, a plugin that fails to import
                errors, graph = [], None
                self.reload_errors = [_describe(exc)]
            else:
                self.reload_errors = [e.format() for e in errors]
            if graph is None or errors:
                for line in self.reload_errors:
                    log.error("%s", line)
                log.error("%s: not reloaded (%d error%s); still serving the previous version", self.path,
                          len(self.reload_errors), "" if len(self.reload_errors) == 1 else "s")
                self.metrics.reloads.labels("invalid").inc()
                return False
            svc = Service(graph, mtime)
            try:
                await svc.runtime.start()
            except Exception as exc:
                self.reload_errors = [_describe(exc)]
                log.error("%s: not reloaded, resources failed to load: %s; still serving the previous version",
                          self.path, self.reload_errors[0])
                self.metrics.reloads.labels("failed").inc()
                await svc.runtime.close()
                return False
            await svc.stamp_service()
            old, self.current = self.current, svc
            self.ready, self.load_error = True, None
            self.metrics.ready.set(1)
            if self.app is not None:
                self.app.openapi_schema = None
            self.metrics.reloads.labels("ok").inc()
            log.info("%s reloaded: spec '%s', %d nodes, provenance %s", self.path, svc.name, len(svc.graph.nodes),
                     svc.stamp.id if svc.stamp else "?")
            self._spawn(self._retire(old))
            return True

    @staticmethod
    async def _retire(old: Service) -> None:
        while old.active:
            await asyncio.sleep(0.05)
        await old.runtime.close()

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

    async def run(self, svc: Service, data: Any, *, trace: bool = False, on_node: Any = None,
                  request_id: str | None = None, endpoint: str = "recommend", session_id: str | None = None,
                  ) -> dict[str, Any]:
        """One spec run, its errors as ApiError and its trace in the metrics; with a log store, the answer is
        queued as an impression (never waiting for the store). ``request_id`` is the run's id."""
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_body", f"a request must be a JSON object with this spec's inputs, "
                           f"got {_json_type(data)}")
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
            result = await svc.runtime.run(data, run_id=request_id, deadline=self.options.deadline, on_node=on_node)
        except InputError as exc:
            raise ApiError(422, "invalid_input", str(exc), exc.field, errors=exc.errors) from None
        except RunError as exc:
            if exc.trace is not None:
                self.metrics.observe_trace(exc.trace, "failed")
            extra: dict[str, Any] = {"node": exc.node_id, "run_id": exc.run_id}
            if trace and exc.trace is not None:
                extra["trace"] = exc.trace.to_dict()
            if isinstance(exc, DeadlineExceededError):
                raise ApiError(503, "deadline_exceeded", str(exc), **extra) from None
            raise ApiError(424, "node_failed", str(exc), **extra) from None
        finally:
            svc.active -= 1
            self.metrics.in_flight.dec()
        self.metrics.observe_trace(result.trace, "degraded" if result.degraded else "ok")
        answer = result.to_dict(trace=trace)
        logs = self.logs
        if logs is not None and request_id is not None:
            try:  # built here, not on the writer thread, so that the answer's objects can die young
                record = impression_record(request_id, time.time(), endpoint, svc.name,
                                           svc.stamp.id if svc.stamp else "", svc.variant, data, answer["outputs"],
                                           answer["degraded"], result.trace, session_id)
            except Exception as exc:  # never the request's failure
                log.warning("an impression could not be recorded: %s", _describe(exc))
                self.metrics.count_log("impressions", "failed", 1)
            else:
                logs.impression(record)
        return answer

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

    async def load_session(self, sid: str | None) -> dict[str, Any]:
        if sid is None:
            return {}
        state = await self.sessions.load(sid)
        return state if isinstance(state, dict) else {}

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


def create_app(options: ServeOptions, graph: Any | None = None) -> FastAPI:
    """The FastAPI app serving ``options.spec`` (validated now: raises SpecErrors when it has errors)."""
    from contextlib import asynccontextmanager

    server = Server(options, graph)

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
        server.metrics.observe_request(endpoint, response.status_code, time.perf_counter() - started)
        return response

    async def recommend(request: Request) -> Response:
        server.authorize(request)
        server.admit(request)
        rid = server.request_id(request)
        data = await server.read_json(request)
        sid = server.session_id(request)
        svc = server.current
        state = await server.load_session(sid)
        if sid is not None and svc.history_input and isinstance(data, dict) and "history" not in data:
            data = {**data, "history": [{"inputs": t.get("inputs"), "outputs": t.get("outputs")}
                                        for t in state.get("turns", [])]}
        answer = await server.run(svc, data, trace=_flag(request, "trace"), request_id=rid, session_id=sid)
        if sid is not None:
            given = {k: v for k, v in data.items() if k != "history"}
            answer["session_id"] = sid
            answer["turn"] = await server.save_turn(sid, state, given, answer)
        return _json(answer, headers={"X-Request-Id": rid, **svc.headers})

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
        # a spec of inline nodes only does no I/O: a wave of a batch's requests at once, so that its batchable
        # nodes (llmrec/runtime/batch.py) see them together
        gate = asyncio.Semaphore(WAVE if svc.runtime.inline_only else options.batch_concurrency)

        async def one(i: int, item: Any) -> dict[str, Any]:
            rid = f"{base}-{i}" if base is not None else uuid.uuid4().hex
            async with gate:
                try:
                    return {"status": 200, "request_id": rid,
                            **await server.run(svc, item, trace=trace, request_id=rid, endpoint="batch")}
                except ApiError as exc:
                    server.metrics.errors.labels(exc.type).inc()
                    return {"status": exc.status, "request_id": rid, **exc.body()}

        with batching():
            results = await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        return _json({"results": results, "ok": sum(r["status"] == 200 for r in results), "count": len(results)},
                     headers=svc.headers)

    async def stream(request: Request) -> Response:
        server.authorize(request)
        server.admit(request)
        rid = server.request_id(request)
        data = await server.read_json(request)
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_body", f"a request must be a JSON object with this spec's inputs, "
                           f"got {_json_type(data)}")
        svc, trace = server.current, _flag(request, "trace")
        try:
            svc.runtime.validate_inputs(data)  # a bad request is a 4xx before the stream starts
        except InputError as exc:
            raise ApiError(422, "invalid_input", str(exc), exc.field, errors=exc.errors) from None
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def on_node(record: Any, value: Any) -> None:
            queue.put_nowait(("node", record.to_dict()))

        async def run() -> None:
            try:
                answer = await server.run(svc, data, trace=trace, on_node=on_node, request_id=rid, endpoint="stream")
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
                                          **svc.headers})

    async def feedback(request: Request) -> Response:
        server.authorize(request)
        logs = server.logs
        if logs is None:
            raise ApiError(404, "logging_off", "this server keeps no log, so it takes no feedback: start it with "
                           "--log-dir DIR or --log-store NAME:WHERE")
        server.admit(request)
        data = await server.read_json(request)
        events = server.feedback_events(data)
        received = time.time()
        if not logs.feedback([feedback_record(e, received) for e in events]):
            raise ApiError(503, "log_overloaded", f"the log queue is full ({server.options.log_queue} records "
                           "waiting); retry shortly", retry_after=1)
        for e in events:
            server.metrics.feedback.labels(e.type).inc()
        return _json({"accepted": len(events)}, 202)

    async def provenance(request: Request) -> Response:
        server.authorize(request)
        svc = server.current
        if svc.stamp is None:
            raise ApiError(503, "not_ready", "resources are still loading; retry shortly", retry_after=1)
        return _json(svc.stamp.to_dict(), headers=svc.headers)

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

    @app.get("/healthz", summary="Alive")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", summary="Ready: 200 once resources are loaded, 503 before")
    async def readyz() -> Response:
        body: dict[str, Any] = {"ready": server.ready, "spec": server.current.name}
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
