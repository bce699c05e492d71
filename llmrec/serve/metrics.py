"""Prometheus metrics of one server, in the app's own CollectorRegistry (never the global one).

With several worker processes (``llmrec serve --workers N``) prometheus_client's multiprocess mode is on
(``PROMETHEUS_MULTIPROC_DIR``, set by the command): every worker writes its samples to files in that folder, and
``/metrics`` reports the sum over all workers, whichever one answers.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
NODE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """Request and node metrics. ``observe_trace`` is called once per finished run with its trace; grounding
    fixes come from the values of nodes whose type declares ``Reports(grounding=True)`` (``observe_grounded``)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, spec_name: str) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.spec_name = spec_name
        self.requests = Counter("llmrec_requests_total", "HTTP requests answered, by endpoint and status code.",
                                ("endpoint", "code"), registry=r)
        self.latency = Histogram("llmrec_request_duration_seconds", "Time to answer a request, by endpoint.",
                                 ("endpoint",), buckets=REQUEST_BUCKETS, registry=r)
        self.errors = Counter("llmrec_errors_total", "Requests answered with an error, by kind "
                              "(invalid_json, invalid_input, node_failed, deadline_exceeded, overloaded, ...).",
                              ("kind",), registry=r)
        self.in_flight = Gauge("llmrec_requests_in_flight", "Spec runs in progress.", registry=r,
                               multiprocess_mode="livesum")
        self.ready = Gauge("llmrec_ready", "1 once resources are loaded and the spec can answer (every worker).",
                           registry=r, multiprocess_mode="livemin")
        self.sessions = Gauge("llmrec_sessions", "Sessions the session store holds (stores that can count them).",
                              registry=r, multiprocess_mode="livesum")
        self.session_bytes = Gauge("llmrec_session_bytes", "Bytes of session state the store holds (stores that "
                                   "can tell, like the memory store).", registry=r, multiprocess_mode="livesum")
        self.reloads = Counter("llmrec_spec_reloads_total", "Spec reloads, by outcome (ok, invalid, failed).",
                               ("outcome",), registry=r)
        self.runs = Counter("llmrec_runs_total", "Spec runs, by outcome (ok, degraded, failed).", ("outcome",),
                            registry=r)
        self.node_latency = Histogram("llmrec_node_duration_seconds", "Time a node took, by node, type and status.",
                                      ("node", "type", "status"), buckets=NODE_BUCKETS, registry=r)
        self.cache_hits = Counter("llmrec_cache_hits_total", "Answers from a cache: the node cache ('node') or a "
                                  "cache inside the node (prompt, semantic).", ("node", "cache"), registry=r)
        self.fallbacks = Counter("llmrec_fallbacks_total", "Fallbacks taken, by node and what it fell back to.",
                                 ("node", "fallback"), registry=r)
        self.llm_calls = Counter("llmrec_llm_calls_total", "LLM calls (re-asks and retries included).",
                                 ("node", "model"), registry=r)
        self.llm_tokens = Counter("llmrec_llm_tokens_total", "LLM tokens, by kind (prompt, completion).",
                                  ("node", "model", "kind"), registry=r)
        self.llm_cost = Counter("llmrec_llm_cost_usd_total", "LLM cost in US dollars.", ("node", "model"),
                                registry=r)
        self.grounding = Counter("llmrec_grounding_violations_total",
                                 "Hallucinated or repeated items fixed by grounding nodes (node types declaring "
                                 "Reports(grounding=True), e.g. verify.grounded), by kind (dropped, repaired, "
                                 "duplicates).", ("node", "kind"), registry=r)
        self.log_records = Counter("llmrec_log_records_total", "Serving log records (--log-dir, --log-store), by "
                                   "kind (impressions, feedback) and outcome (written; dropped: the queue was "
                                   "full; failed: the store raised).", ("kind", "outcome"), registry=r)
        self.log_pending = Gauge("llmrec_log_pending", "Serving log records queued, not yet written.", registry=r,
                                 multiprocess_mode="livesum")
        self.feedback = Counter("llmrec_feedback_events_total", "Feedback events accepted (POST /v1/feedback), by "
                                "type (click, purchase, rating, dismissal).", ("type",), registry=r)
        self._log_children: dict[tuple[str, str], Any] = {}
        for kind in ("impressions", "feedback"):
            for outcome in ("written", "dropped", "failed"):
                self._log_children[(kind, outcome)] = self.log_records.labels(kind, outcome)
        for kind in ("click", "purchase", "rating", "dismissal"):
            self.feedback.labels(kind)
        for outcome in ("ok", "invalid", "failed"):  # every outcome a series from the start, at 0
            self.reloads.labels(outcome)
        for outcome in ("ok", "degraded", "failed"):
            self.runs.labels(outcome)
        self._node_children: dict[tuple[str, str, str], Any] = {}
        self._request_children: dict[tuple[str, str], Any] = {}
        self._latency_children: dict[str, Any] = {}

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        key = (endpoint, str(code))
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*key)
        child.inc()
        lat = self._latency_children.get(endpoint)
        if lat is None:
            lat = self._latency_children[endpoint] = self.latency.labels(endpoint)
        lat.observe(seconds)

    def observe_trace(self, trace: Any, outcome: str) -> None:
        self.runs.labels(outcome).inc()
        children = self._node_children
        for rec in trace.nodes:
            key = (rec.node_id, rec.type, rec.status)
            child = children.get(key)
            if child is None:
                child = children[key] = self.node_latency.labels(*key)
            child.observe(rec.wall_ms / 1000.0)
            if rec.cache_hit:
                self.cache_hits.labels(rec.node_id, "node").inc()
            if rec.cache is not None:
                self.cache_hits.labels(rec.node_id, rec.cache).inc()
            if rec.fallback is not None:
                self.fallbacks.labels(rec.node_id, rec.fallback.split(":", 1)[0]).inc()
            u = rec.usage
            if u is not None:
                model = u.model or "unknown"
                if u.calls:
                    self.llm_calls.labels(rec.node_id, model).inc(u.calls)
                for kind, n in (("prompt", u.prompt_tokens), ("completion", u.completion_tokens)):
                    if n:
                        self.llm_tokens.labels(rec.node_id, model, kind).inc(n)
                if u.cost:
                    self.llm_cost.labels(rec.node_id, model).inc(u.cost)

    def count_log(self, kind: str, outcome: str, n: int) -> None:
        """Log records of ``kind`` (impressions, feedback) that were written, dropped or failed (called by the
        log writer's thread; prometheus_client's counters are thread-safe)."""
        child = self._log_children.get((kind, outcome))
        if child is not None and n:
            child.inc(n)

    def observe_log(self, writer: Any) -> None:
        """The log writer's queue length, when logging is on."""
        if writer is not None:
            self.log_pending.set(writer.pending)

    def observe_grounded(self, node_id: str, value: Any) -> None:
        for kind in ("dropped", "repaired", "duplicates"):
            n = getattr(value, kind, 0)
            if isinstance(n, int) and n > 0:
                self.grounding.labels(node_id, kind).inc(n)

    def observe_sessions(self, store: Any) -> None:
        """The session store's size, when it can tell (``len(store)``, ``store.nbytes``)."""
        try:
            count = len(store)
        except TypeError:
            pass
        else:
            self.sessions.set(count)
        nbytes = getattr(store, "nbytes", None)
        if isinstance(nbytes, int):
            self.session_bytes.set(nbytes)

    def render(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):  # every worker's samples, summed
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
