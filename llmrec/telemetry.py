"""OpenTelemetry tracing: a span per request and a child span per node, off by default and free when off.

    tracing = configure("console")          # or "otlp"; None (and nothing imported) when tracing is off
    result = runtime.run_sync({"user_id": "u1"})
    tracing.record_run(result.trace, attributes={"llmrec.variant": "fast"})
    tracing.shutdown()                      # flush what is still queued

Nothing here runs while a spec runs: a run's spans are built *after* it, from its :class:`~llmrec.runtime.trace.Trace`
(each node record's start and wall time become the span's explicit start and end), so the scheduler's hot path
pays nothing per node and a process without tracing never imports the OpenTelemetry SDK (this module imports
only the standard library until :func:`configure` is called).

What turns tracing on: ``--otel console|otlp`` on ``llmrec serve`` and ``llmrec run``, or the SDK's own
``OTEL_TRACES_EXPORTER`` (``console``, ``otlp``; ``none`` is off), with ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER`` and the other standard variables read by the SDK itself. Unset,
tracing is off (the SDK's default exporter, otlp, applies only once something asks for tracing). Attribute names
are listed in docs/observability.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import LlmrecError

#: the exporters ``--otel`` and ``OTEL_TRACES_EXPORTER`` accept (``none`` turns tracing off)
EXPORTERS = ("console", "otlp", "none")
INSTALL_HINT = "pip install 'llmrec[otel]'"
#: the instrumentation scope of every span llmrec makes
SCOPE = "llmrec"
#: the response header that carries a request's trace id (32 hex digits)
TRACE_ID_HEADER = "X-Trace-Id"

_OFF = frozenset({"", "none", "off", "false", "0"})


class TelemetryError(LlmrecError):
    """Tracing was asked for and cannot be set up: the SDK is missing, or an exporter name is unknown."""


def wanted_exporters(flag: str | None = None, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The exporters asked for: ``flag`` (``--otel``) when given, else ``OTEL_TRACES_EXPORTER``; empty when tracing
    is off (neither given, ``none``, or ``OTEL_SDK_DISABLED=true``). Raises TelemetryError for an unknown name."""
    env = os.environ if environ is None else environ
    if flag is None:
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return ()
        flag = env.get("OTEL_TRACES_EXPORTER")
        where = "OTEL_TRACES_EXPORTER"
    else:
        where = "--otel"
    if flag is None or flag.strip().lower() in _OFF:
        return ()
    names = tuple(dict.fromkeys(n.strip().lower() for n in flag.split(",") if n.strip()))
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TelemetryError(f"{where}: unknown trace exporter '{unknown[0]}'; use console, otlp or none "
                             "(several: console,otlp)")
    return tuple(n for n in names if n != "none")


def _sdk() -> Any:
    try:
        # lazy: the SDK loads only when tracing is on
        from opentelemetry.sdk import trace as sdk_trace
    except ImportError as exc:
        raise TelemetryError(f"tracing needs the OpenTelemetry SDK, which is not installed ({exc.name}): "
                             f"{INSTALL_HINT}") from None
    return sdk_trace


def _exporter(name: str, environ: Mapping[str, str], console: Any = None) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter() if console is None else ConsoleSpanExporter(out=console)
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TelemetryError("OTLP over gRPC needs opentelemetry-exporter-otlp-proto-grpc (pip install it), or "
                                 "set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf (llmrec[otel] exports over HTTP)"
                                 ) from None
        return OTLPSpanExporter()
    if protocol != "http/protobuf":
        raise TelemetryError(f"OTEL_EXPORTER_OTLP_PROTOCOL: '{protocol}' is not supported; use http/protobuf "
                             "(or grpc with opentelemetry-exporter-otlp-proto-grpc installed)")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    except ImportError as exc:
        raise TelemetryError(f"the otlp exporter needs opentelemetry-exporter-otlp-proto-http, which is not "
                             f"installed ({exc.name}): {INSTALL_HINT}") from None
    return HttpExporter()  # reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT itself


def configure(exporters: str | Sequence[Any] | None = None, *, service_name: str | None = None,
              simple: bool = False, install: bool = False, environ: Mapping[str, str] | None = None,
              console: Any = None) -> Tracing | None:
    """Set tracing up, or return None (importing nothing) when it is off.

    ``exporters``: ``--otel``'s value (``console``, ``otlp``, ``console,otlp``, ``none``), None to read
    ``OTEL_TRACES_EXPORTER``, or SDK ``SpanExporter`` objects (tests pass an ``InMemorySpanExporter``).
    ``simple``: export each span as it ends (SimpleSpanProcessor) instead of in batches from a background thread.
    ``install``: also make it the process's global tracer provider, so that other instrumented libraries' spans
    join the same traces. The service name is ``service_name``, else ``OTEL_SERVICE_NAME``, else ``llmrec``.
    ``console``: the stream the console exporter writes to (default stdout)."""
    env = os.environ if environ is None else environ
    if exporters is None or isinstance(exporters, str):
        names = wanted_exporters(exporters, env)
        if not names:
            return None
        sdk_trace = _sdk()
        made = [_exporter(n, env, console) for n in names]
    else:
        sdk_trace = _sdk()
        made = list(exporters)
        if not made:
            return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    attrs = {"service.name": service_name or env.get("OTEL_SERVICE_NAME") or "llmrec"}
    try:
        attrs["service.version"] = _version()
    except Exception:  # a version that cannot be read never stops tracing
        pass
    # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES; explicit attributes win
    provider = sdk_trace.TracerProvider(resource=Resource.create(attrs), shutdown_on_exit=True)
    for exporter in made:
        provider.add_span_processor(SimpleSpanProcessor(exporter) if simple else BatchSpanProcessor(exporter))
    if install:
        from opentelemetry import trace as api_trace

        api_trace.set_tracer_provider(provider)
    return Tracing(provider)


def _version() -> str:
    from .plugins import llmrec_version  # lazy: plugins builds nothing on import, but keep this module stdlib-only

    return llmrec_version()


#: what a node record's fields become on its span
NODE_ID, NODE_TYPE, NODE_STATUS = "llmrec.node.id", "llmrec.node.type", "llmrec.node.status"


class Tracing:
    """A tracer and what llmrec does with it: request spans (:meth:`start_request`), a run's spans built from its
    trace (:meth:`record_run`), W3C ``traceparent`` in and trace ids out."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.provider = provider
        self.tracer = provider.get_tracer(SCOPE, _safe_version())
        self._trace, self._context, self._propagate = trace, context, propagate
        self._kind_server, self._kind_internal = SpanKind.SERVER, SpanKind.INTERNAL
        self._error = lambda description: Status(StatusCode.ERROR, description)

    # -- context -------------------------------------------------------------------------------------------
    def extract(self, carrier: Mapping[str, str]) -> Any:
        """The context a carrier (HTTP headers, or ``{"traceparent": $TRACEPARENT}``) continues; the current
        context when it carries none (or a malformed one: W3C says start a new trace)."""
        return self._propagate.extract(carrier)

    def context_from_env(self, environ: Mapping[str, str] | None = None) -> Any:
        """The context of ``$TRACEPARENT`` (and ``$TRACESTATE``), the environment carrier that the OpenTelemetry
        specification proposes for a parent process that starts a command: ``llmrec run`` continues it."""
        env = os.environ if environ is None else environ
        carrier = {k.lower(): env[k] for k in ("TRACEPARENT", "TRACESTATE") if env.get(k)}
        return self.extract(carrier) if carrier else None

    def inject(self, carrier: dict[str, str], context: Any = None) -> dict[str, str]:
        """Write the current (or ``context``'s) trace into ``carrier`` as ``traceparent``: for calls to other
        services."""
        self._propagate.inject(carrier, context=context)
        return carrier

    def attach(self, context: Any) -> Any:
        """Make ``context`` current (a token for :meth:`detach`): a task that outlives its request (a stream)
        re-attaches the request's context."""
        return self._context.attach(context)

    def detach(self, token: Any) -> None:
        self._context.detach(token)

    def current_context(self) -> Any:
        return self._context.get_current()

    def trace_id(self, context: Any = None) -> str | None:
        """The current (or ``context``'s) trace id as 32 hex digits; None outside any trace."""
        span = self._trace.get_current_span(context)
        ctx = span.get_span_context()
        return format(ctx.trace_id, "032x") if ctx.trace_id else None

    # -- spans ---------------------------------------------------------------------------------------------
    def start_request(self, name: str, headers: Mapping[str, str] | None = None,
                      attributes: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
        """Start a server request's span, continuing the caller's trace when ``headers`` carry a ``traceparent``,
        and make it current: (span, token). End it with :meth:`end_request`."""
        parent = self.extract(headers) if headers is not None else None
        span = self.tracer.start_span(name, context=parent, kind=self._kind_server, attributes=attributes)
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        return span, token

    def end_request(self, span: Any, token: Any, status_code: int, attributes: Mapping[str, Any] | None = None
                    ) -> None:
        """End a request span with its HTTP status (5xx is an error, as the HTTP conventions say for servers)."""
        try:
            self._context.detach(token)
        except Exception:  # detached in another context (cannot happen on one task; never the request's failure)
            pass
        if span.is_recording():
            span.set_attribute("http.response.status_code", status_code)
            if attributes:
                span.set_attributes(attributes)
            if status_code >= 500:
                span.set_status(self._error(f"HTTP {status_code}"))
        span.end()

    def record_run(self, trace: Any, *, attributes: Mapping[str, Any] | None = None, context: Any = None,
                   error: BaseException | None = None) -> str | None:
        """The spans of a finished run, built from its :class:`~llmrec.runtime.trace.Trace`: a ``run SPEC`` span
        (child of ``context``, else of the current span, else a new trace's root) over the run's wall time, and a
        ``node ID`` span per node that ran (skipped and cancelled nodes too; nodes that never started are not
        traced), at the times the trace recorded. ``error``: the run failed (its span's status is ERROR).
        Returns the trace id (32 hex digits)."""
        start_ns = int(trace.started_at * 1e9)
        attrs: dict[str, Any] = {"llmrec.spec": trace.spec, "llmrec.run_id": trace.run_id,
                                 "llmrec.degraded": trace.degraded}
        if attributes:
            attrs.update((k, v) for k, v in attributes.items() if v is not None)
        run = self.tracer.start_span(f"run {trace.spec}", context=context, kind=self._kind_internal, attributes=attrs,
                                     start_time=start_ns)
        tid = format(run.get_span_context().trace_id, "032x")
        if not run.is_recording():  # not sampled: nothing to build
            run.end(start_ns + int(trace.wall_ms * 1e6))
            return tid
        if error is not None:
            run.set_status(self._error(f"{type(error).__name__}: {error}"))
            node_id = getattr(error, "node_id", None)
            if node_id:
                run.set_attribute("llmrec.failed_node", node_id)
        parent = self._trace.set_span_in_context(run)
        tracer, internal = self.tracer, self._kind_internal
        for rec in trace.nodes:
            if rec.status == "pending":
                continue
            node_start = start_ns + int(rec.start_ms * 1e6)
            span = tracer.start_span(f"node {rec.node_id}", context=parent, kind=internal,
                                     attributes=node_attributes(rec), start_time=node_start)
            if rec.status == "error":
                span.set_status(self._error(rec.error or "failed"))
            span.end(node_start + int(rec.wall_ms * 1e6))
        run.end(start_ns + int(trace.wall_ms * 1e6))
        return tid

    def flush(self, timeout_ms: int = 5000) -> bool:
        """Export every span that has ended (returns False when the exporters did not finish in time)."""
        return bool(self.provider.force_flush(timeout_ms))

    def shutdown(self) -> None:
        """Flush, then stop the exporters (once per Tracing)."""
        try:
            self.provider.shutdown()
        except Exception as exc:  # an exporter that cannot reach its collector: say so, never fail the command
            logging.getLogger("llmrec").warning("tracing: the exporter did not shut down cleanly: %s", exc)


def node_attributes(rec: Any) -> dict[str, Any]:
    """A node record's span attributes (docs/observability.md): id, type, status, cache, retries, fallback,
    error, and model usage (calls, tokens, cost) when the node type reports it."""
    attrs: dict[str, Any] = {NODE_ID: rec.node_id, NODE_TYPE: rec.type, NODE_STATUS: rec.status,
                             "llmrec.node.cache_hit": bool(rec.cache_hit or rec.cache is not None),
                             "llmrec.node.retries": rec.retries,
                             "llmrec.node.fallback_used": rec.fallback is not None}
    if rec.cache is not None:
        attrs["llmrec.node.cache"] = rec.cache
    if rec.fallback is not None:
        attrs["llmrec.node.fallback"] = rec.fallback
        if rec.fallback_reason:
            attrs["llmrec.node.fallback_reason"] = rec.fallback_reason
    if rec.error:
        attrs["llmrec.node.error"] = rec.error
    u = rec.usage
    if u is not None:
        if u.model:
            attrs["gen_ai.request.model"] = u.model
        attrs["gen_ai.usage.input_tokens"] = u.prompt_tokens
        attrs["gen_ai.usage.output_tokens"] = u.completion_tokens
        attrs["llmrec.llm.calls"] = u.calls
        attrs["llmrec.llm.cost_usd"] = u.cost
    return attrs


def run_spans(tracing: Tracing, attributes: Mapping[str, Any] | None = None) -> Any:
    """A plugin that turns every run of a Runtime into spans, through the ``llmrec_after_run`` hook: for the
    Python API, where no server or command makes the spans (``make_registry(run_spans(tracing))``, then build the
    graph with that registry). A run's spans are children of the span current when it ran."""
    from .hookspecs import hookimpl  # lazy: pluggy, only when this plugin is made

    class RunSpans:
        def __init__(self) -> None:
            self.tracing, self.attributes = tracing, attributes

        @hookimpl
        def llmrec_after_run(self, result: Any) -> None:
            run_trace = getattr(result, "trace", None)
            if run_trace is not None:
                self.tracing.record_run(run_trace, attributes=self.attributes)
            else:  # the failed run's trace: its failing node's record says what failed
                failed = next((r for r in result.nodes if r.status == "error"), None)
                self.tracing.record_run(result, attributes=self.attributes,
                                        error=RuntimeError(failed.error if failed else "the run failed"))

    return RunSpans()


def _safe_version() -> str | None:
    try:
        return _version()
    except Exception:
        return None


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id`` (the current span's, or ``-``) to every record of the logger it is added to, and writes
    it at the end of each line its handlers format (:func:`log_trace_ids`)."""

    def __init__(self, tracing: Tracing) -> None:
        super().__init__()
        self.tracing = tracing

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            record.trace_id = self.tracing.trace_id() or "-"
        return True


def log_trace_ids(logger: logging.Logger, tracing: Tracing) -> None:
    """Make ``logger``'s lines end with ``trace_id=...`` (the trace of the request being answered when the line
    was logged). Idempotent."""
    if any(isinstance(f, TraceIdFilter) for f in logger.filters):
        return
    stamp = TraceIdFilter(tracing)
    logger.addFilter(stamp)
    for handler in logger.handlers:
        fmt = handler.formatter._fmt if handler.formatter is not None else None  # noqa: SLF001
        if fmt and "trace_id" not in fmt:
            # a record that reaches the handler another way (a child logger's, propagated) still formats: the
            # handler stamps it too, and a record nothing stamped shows '-'
            handler.addFilter(stamp)
            handler.setFormatter(logging.Formatter(fmt + " trace_id=%(trace_id)s", defaults={"trace_id": "-"}))
