"""OpenTelemetry tracing (llmrec/telemetry.py): a run's spans built from its trace, served requests continuing a
caller's W3C traceparent, the trace id in headers, JSON and logs, and nothing of the SDK imported when off."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from llmrec import telemetry
from llmrec.api import validate
from llmrec.runtime.executor import Runtime
from llmrec.serve.app import ServeOptions, create_app

from .conftest import FAILING, TOOLS, wait_ready, write

ROOT = Path(__file__).resolve().parents[2]
LLMREC = [str(Path(sys.executable).with_name("llmrec"))]
CALLER_TRACE, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def tracing(exporter: InMemorySpanExporter) -> telemetry.Tracing:
    made = telemetry.configure([exporter], simple=True, service_name="llmrec-tests")
    assert made is not None
    return made


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Any:
    exporter.clear()

    def finished() -> list[ReadableSpan]:
        return list(exporter.get_finished_spans())

    return finished


def _by_name(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def _hex(value: int, digits: int) -> str:
    return format(value, f"0{digits}x")


def test_a_run_is_a_span_with_a_child_span_per_node_carrying_the_trace_records(
        tmp_path: Path, tracing: telemetry.Tracing, spans: Any) -> None:
    graph = validate(write(tmp_path, TOOLS % {"seconds": 0.02}))
    result = Runtime(graph).run_sync({"items": ["a", "b"]})
    tid = tracing.record_run(result.trace, attributes={"llmrec.variant": "fast", "llmrec.provenance": "p1",
                                                       "llmrec.arm": None})
    got = _by_name(spans())
    assert set(got) == {"run tools", "node slow", "node llm", "node broken"}
    run = got["run tools"]
    assert run.parent is None and _hex(run.context.trace_id, 32) == tid
    assert dict(run.attributes) == {"llmrec.spec": "tools", "llmrec.run_id": result.trace.run_id,
                                    "llmrec.degraded": True, "llmrec.variant": "fast", "llmrec.provenance": "p1"}
    assert run.resource.attributes["service.name"] == "llmrec-tests"
    for name in ("node slow", "node llm", "node broken"):  # children of the run, inside its time
        span = got[name]
        assert span.parent is not None and span.parent.span_id == run.context.span_id
        assert span.context.trace_id == run.context.trace_id
        assert run.start_time <= span.start_time <= span.end_time <= run.end_time
    slow = got["node slow"]
    assert (slow.end_time - slow.start_time) / 1e6 == pytest.approx(result.trace.node("slow").wall_ms, abs=0.01)
    assert (slow.end_time - slow.start_time) >= 15e6  # it slept 20 ms: the span has the node's real duration
    assert got["node llm"].start_time >= slow.end_time  # llm waits for slow
    llm = dict(got["node llm"].attributes)
    assert llm["llmrec.node.type"] == "servetest.sleep" and llm["llmrec.node.status"] == "ok"
    assert llm["gen_ai.request.model"] == "fake-model" and llm["gen_ai.usage.input_tokens"] == 12
    assert llm["gen_ai.usage.output_tokens"] == 5 and llm["llmrec.llm.calls"] == 1
    assert llm["llmrec.llm.cost_usd"] == pytest.approx(0.001)
    assert llm["llmrec.node.cache_hit"] is False and llm["llmrec.node.fallback_used"] is False
    broken = got["node broken"]
    attrs = dict(broken.attributes)
    assert attrs["llmrec.node.status"] == "fallback" and attrs["llmrec.node.fallback_used"] is True
    assert attrs["llmrec.node.fallback"] == "value" and "boom" in attrs["llmrec.node.fallback_reason"]
    assert broken.status.status_code is StatusCode.UNSET  # it fell back: the run answered
    assert "gen_ai.usage.input_tokens" not in attrs  # no usage reported, none invented


def test_a_failed_run_and_its_failing_node_have_error_status(tmp_path: Path, tracing: telemetry.Tracing,
                                                             spans: Any) -> None:
    from llmrec.errors import RunError

    graph = validate(write(tmp_path, FAILING))
    with pytest.raises(RunError) as info:
        Runtime(graph).run_sync({"items": ["a"]})
    tracing.record_run(info.value.trace, error=info.value)
    got = _by_name(spans())
    run, node = got["run failing"], got["node broken"]
    assert run.status.status_code is StatusCode.ERROR and run.attributes["llmrec.failed_node"] == "broken"
    assert node.status.status_code is StatusCode.ERROR and "boom" in node.status.description
    assert node.attributes["llmrec.node.status"] == "error" and "boom" in node.attributes["llmrec.node.error"]


def test_the_after_run_hook_plugin_traces_runs_of_the_python_api(tmp_path: Path, tracing: telemetry.Tracing,
                                                                  spans: Any) -> None:
    from llmrec.graph.build import build
    from llmrec.plugins import make_registry
    from llmrec.spec.loader import load_spec

    path = write(tmp_path, TOOLS % {"seconds": 0})
    registry = make_registry(telemetry.run_spans(tracing, {"llmrec.variant": "api"}), spec_dir=tmp_path)
    runtime = Runtime(build(load_spec(path), registry))
    runtime.run_sync({"items": ["a"]})
    runtime.run_sync({"items": ["b"]})
    runs = [s for s in spans() if s.name == "run tools"]
    assert len(runs) == 2 and {s.attributes["llmrec.variant"] for s in runs} == {"api"}
    assert len({s.context.trace_id for s in runs}) == 2  # no current span: each run is a trace of its own
    assert len([s for s in spans() if s.name.startswith("node ")]) == 6


@pytest.fixture
def served(tmp_path: Path, tracing: telemetry.Tracing) -> Any:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def make(text: str, **options: Any) -> Any:
        app = create_app(ServeOptions(spec=str(write(tmp_path, text)), reload_interval=0, **options),
                         tracing=tracing)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
                client.server = app.state.server  # type: ignore[attr-defined]
                await wait_ready(client)
                yield client

    return make


async def test_a_served_request_continues_the_callers_traceparent_and_returns_the_trace_id(
        served: Any, spans: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    logs = tmp_path / "logs"
    async with served(TOOLS % {"seconds": 0}, log_store="file", log_location=str(logs)) as client:
        spans()  # readiness probes' spans are not this request's
        with caplog.at_level(logging.DEBUG, logger="llmrec.serve"):
            r = await client.post("/v1/recommend?trace=true", json={"items": ["a"]},
                                  headers={"traceparent": TRACEPARENT, "X-Request-Id": "req-1"})
        other = await client.post("/v1/recommend", json={"items": ["b"]})  # no traceparent: a new trace
        stamp = client.server.current.stamp.id
    assert r.status_code == 200
    assert r.headers["X-Trace-Id"] == CALLER_TRACE and r.json()["trace"]["trace_id"] == CALLER_TRACE
    assert other.headers["X-Trace-Id"] not in (CALLER_TRACE, "") and len(other.headers["X-Trace-Id"]) == 32
    mine = [s for s in spans() if _hex(s.context.trace_id, 32) == CALLER_TRACE]
    got = _by_name(mine)
    assert set(got) == {"POST /v1/recommend", "run tools", "node slow", "node llm", "node broken"}
    request = got["POST /v1/recommend"]
    assert request.kind is SpanKind.SERVER and request.parent is not None
    assert _hex(request.parent.span_id, 16) == CALLER_SPAN and request.parent.is_remote
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["llmrec.request_id"] == "req-1"
    run = got["run tools"]
    assert run.parent.span_id == request.context.span_id
    assert run.attributes["llmrec.provenance"] == stamp and run.attributes["llmrec.request_id"] == "req-1"
    assert got["node llm"].parent.span_id == run.context.span_id
    # the request's log line and its impression carry the trace id
    line = next(rec for rec in caplog.records if "request_id=req-1" in rec.getMessage())
    assert line.trace_id == CALLER_TRACE  # type: ignore[attr-defined]
    impressions = [json.loads(x) for f in sorted(logs.glob("impressions*")) for x in f.read_text().splitlines()]
    assert {i["request_id"]: i.get("trace_id") for i in impressions}["req-1"] == CALLER_TRACE


async def test_errors_carry_the_trace_id_and_a_failed_run_is_an_error_span(served: Any, spans: Any) -> None:
    async with served(FAILING) as client:
        spans()
        r = await client.post("/v1/recommend?trace=true", json={"items": ["a"]}, headers={"traceparent": TRACEPARENT})
        bad = await client.post("/v1/recommend", content=b"{nope", headers={"traceparent": TRACEPARENT})
    assert r.status_code == 424 and r.headers["X-Trace-Id"] == CALLER_TRACE
    assert r.json()["error"]["trace"]["trace_id"] == CALLER_TRACE
    assert bad.status_code == 400 and bad.headers["X-Trace-Id"] == CALLER_TRACE
    got = [s for s in spans() if _hex(s.context.trace_id, 32) == CALLER_TRACE]
    assert sorted(s.name for s in got) == ["POST /v1/recommend", "POST /v1/recommend", "node broken",
                                           "run failing"]
    assert next(s for s in got if s.name == "run failing").status.status_code is StatusCode.ERROR
    codes = sorted(s.attributes["http.response.status_code"] for s in got if s.kind is SpanKind.SERVER)
    assert codes == [400, 424]


async def test_a_batch_has_a_run_span_per_request_under_the_request_span(served: Any, spans: Any) -> None:
    async with served(TOOLS % {"seconds": 0}) as client:
        spans()
        r = await client.post("/v1/recommend/batch", json={"requests": [{"items": ["a"]}, {"items": ["b"]}]},
                              headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200 and r.headers["X-Trace-Id"] == CALLER_TRACE
    got = [s for s in spans() if _hex(s.context.trace_id, 32) == CALLER_TRACE]
    request = next(s for s in got if s.name == "POST /v1/recommend/batch")
    runs = [s for s in got if s.name == "run tools"]
    assert len(runs) == 2 and all(s.parent.span_id == request.context.span_id for s in runs)
    assert len([s for s in got if s.name.startswith("node ")]) == 6


def test_log_lines_end_with_the_trace_id_of_the_request_being_answered(tracing: telemetry.Tracing) -> None:
    import io

    logger, stream = logging.getLogger("llmrec.test_otel"), io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))  # as serve's configure_logging
    logger.addHandler(handler)
    logger.propagate = False
    try:
        telemetry.log_trace_ids(logger, tracing)
        telemetry.log_trace_ids(logger, tracing)  # idempotent
        logger.warning("outside")
        span, token = tracing.start_request("GET /x", {"traceparent": TRACEPARENT})
        logger.warning("inside")
        tracing.end_request(span, token, 200)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == ["WARNING: outside trace_id=-", f"WARNING: inside trace_id={CALLER_TRACE}"]


def test_a_record_reaching_the_handler_another_way_still_formats(tracing: telemetry.Tracing) -> None:
    """A child logger's record propagates to the handler without passing the logger's filter, and a record
    handed to the handler directly carries no trace id: both format (no KeyError 'trace_id', no 500)."""
    import io

    logger, stream = logging.getLogger("llmrec.test_otel_child"), io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        telemetry.log_trace_ids(logger, tracing)
        logging.getLogger("llmrec.test_otel_child.deeper").warning("from a child")
        handler.format(logging.LogRecord("elsewhere", logging.WARNING, __file__, 1, "bare", None, None))
        bare = handler.formatter.format(logging.LogRecord("elsewhere", logging.WARNING, __file__, 1, "bare", None,
                                                          None))
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == ["WARNING: from a child trace_id=-"]
    assert bare == "WARNING: bare trace_id=-"


def test_exporter_names_and_a_missing_sdk_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert telemetry.wanted_exporters(None, {}) == ()  # off by default
    assert telemetry.wanted_exporters(None, {"OTEL_TRACES_EXPORTER": "otlp,console"}) == ("otlp", "console")
    assert telemetry.wanted_exporters(None, {"OTEL_TRACES_EXPORTER": "none"}) == ()
    assert telemetry.wanted_exporters(None, {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}) == ()
    assert telemetry.wanted_exporters("none", {"OTEL_TRACES_EXPORTER": "console"}) == ()  # the flag wins
    with pytest.raises(telemetry.TelemetryError, match="--otel: unknown trace exporter 'jaeger'"):
        telemetry.wanted_exporters("jaeger", {})
    assert telemetry.configure(None, environ={}) is None
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)  # as if llmrec[otel] were not installed
    with pytest.raises(telemetry.TelemetryError, match=r"pip install 'llmrec\[otel\]'"):
        telemetry.configure("console", environ={})


def test_llmrec_run_refuses_an_unknown_exporter_and_traces_to_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrec.cli import main

    spec = write(tmp_path, TOOLS % {"seconds": 0})
    assert main(["run", str(spec), "--otel", "jaeger"]) == 2
    assert "unknown trace exporter 'jaeger'" in capsys.readouterr().err
    monkeypatch.setenv("TRACEPARENT", TRACEPARENT)  # a parent process's trace, continued
    assert main(["run", str(spec), "-i", 'items:=["a"]', "--otel", "console"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["outputs"]["items"] == ["a"]  # stdout keeps the JSON; spans go to stderr
    assert f'"trace_id": "0x{CALLER_TRACE}"' in err and f'"parent_id": "0x{CALLER_SPAN}"' in err
    assert '"name": "node llm"' in err and '"name": "run tools"' in err


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACE"))}
    return {**env, "LLMREC_LOAD_PLUGINS": "", "PYTHONUNBUFFERED": "1", **extra}


OFF = r"""
import sys
from fastapi.testclient import TestClient
from llmrec.serve.app import ServeOptions, create_app
with TestClient(create_app(ServeOptions(spec=sys.argv[1], reload_interval=0))) as client:
    for _ in range(200):
        if client.get("/readyz").status_code == 200:
            break
    r = client.post("/v1/recommend", json={"items": ["a"]}, headers={"traceparent": sys.argv[2]})
    assert r.status_code == 200 and "x-trace-id" not in r.headers, r.headers
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""


def test_with_tracing_off_nothing_of_the_sdk_is_imported(tmp_path: Path) -> None:
    spec = write(tmp_path, TOOLS % {"seconds": 0})
    done = subprocess.run([sys.executable, "-c", OFF, str(spec), TRACEPARENT], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    imported = json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"'))
    assert not [m for m in imported if m.startswith("opentelemetry.sdk")]


def test_llmrec_serve_otel_console_across_processes_with_two_workers(tmp_path: Path) -> None:
    """A real server (two worker processes), a caller's traceparent per request: every answer names the caller's
    trace, and the workers' console exporters print spans whose parent is the caller's span."""
    import socket

    spec = write(tmp_path, TOOLS % {"seconds": 0})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*LLMREC, "serve", str(spec), "--port", str(port), "--workers", "2", "--otel", "console",
                             "--reload-interval", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(OTEL_SERVICE_NAME="shop-api"), cwd=ROOT)
    traces = [f"{i:032x}" for i in range(1, 5)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        for tid in traces:  # new connections: spread over the workers
            r = httpx.post(url + "/v1/recommend", json={"items": ["a"]},
                           headers={"traceparent": f"00-{tid}-{CALLER_SPAN}-01"}, timeout=10)
            assert r.status_code == 200 and r.headers["X-Trace-Id"] == tid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert "Traceback" not in err
    decoder, printed, at = json.JSONDecoder(), [], out.find("{")
    while at != -1:  # the console exporter prints one JSON object per span
        span, end = decoder.raw_decode(out, at)
        printed.append(span)
        at = out.find("{", end)
    requests = {s["context"]["trace_id"][2:]: s for s in printed if s["name"] == "POST /v1/recommend"}
    assert set(traces) <= set(requests)
    for tid in traces:
        assert requests[tid]["parent_id"] == f"0x{CALLER_SPAN}" and requests[tid]["kind"] == "SpanKind.SERVER"
        assert requests[tid]["resource"]["attributes"]["service.name"] == "shop-api"
        nodes = [s for s in printed if s["context"]["trace_id"][2:] == tid and s["name"].startswith("node ")]
        assert sorted(s["attributes"]["llmrec.node.id"] for s in nodes) == ["broken", "llm", "slow"]
