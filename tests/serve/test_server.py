"""`llmrec serve` for real: the command as a subprocess on a free port, and the playground in headless Chromium."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from llmrec.testing import free_port, wait_until_ready

from .conftest import CHROMIUM, SHOP, TOOLS, playground_page, write

ROOT = Path(__file__).resolve().parents[2]
LLMREC = [str(Path(sys.executable).with_name("llmrec"))]


def _env() -> dict[str, str]:
    return {**os.environ, "LLMREC_LOAD_PLUGINS": "", "PYTHONUNBUFFERED": "1"}


def test_serve_refuses_an_invalid_spec_with_validates_messages(tmp_path: Path) -> None:
    spec = write(tmp_path, SHOP.replace("type: rerank.filter_seen", "type: rerank.filter_sene"))
    validate = subprocess.run([*LLMREC, "validate", str(spec)], capture_output=True, text=True, env=_env(), cwd=ROOT)
    serve = subprocess.run([*LLMREC, "serve", str(spec), "--port", str(free_port())], capture_output=True,
                           text=True, env=_env(), cwd=ROOT, timeout=60)
    assert serve.returncode == 1
    error_line = next(line for line in validate.stdout.splitlines() if "filter_sene" in line)
    assert error_line in serve.stderr
    assert "Traceback" not in serve.stderr


def test_llmrec_serve_answers_reloads_on_sighup_and_finishes_in_flight_requests_on_sigterm(tmp_path: Path) -> None:
    spec = write(tmp_path, TOOLS % {"seconds": 0.6})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = subprocess.Popen([*LLMREC, "serve", str(spec), "--port", str(port), "--reload-interval", "0",
                             "--api-key", "k1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=ROOT)
    try:
        wait_until_ready(url, proc)
        assert time.monotonic() - started < 30
        auth = {"Authorization": "Bearer k1"}
        with httpx.Client(base_url=url, headers=auth, timeout=10) as client:
            r = client.post("/v1/recommend", json={"items": ["a", "b"]})
            assert r.status_code == 200 and r.json()["outputs"]["items"] == ["a", "b"]
            assert client.post("/v1/recommend", content=b"{nope").status_code == 400
            assert httpx.post(url + "/v1/recommend", json={"items": []}).status_code == 401

            spec.write_text((TOOLS % {"seconds": 0.6}).replace("items: ${llm}", "renamed: ${llm}"))
            proc.send_signal(signal.SIGHUP)
            for _ in range(100):
                if "renamed" in client.post("/v1/recommend", json={"items": []}).json()["outputs"]:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("SIGHUP did not reload the spec")

            answer: dict[str, object] = {}

            def slow() -> None:
                answer["r"] = client.post("/v1/recommend", json={"items": ["x"]})

            t = threading.Thread(target=slow)
            t.start()
            time.sleep(0.25)  # the request is in flight (its node sleeps 0.6 s)
            proc.send_signal(signal.SIGTERM)
            t.join(10)
        r = answer["r"]
        assert r.status_code == 200 and r.json()["outputs"]["renamed"] == ["x"]  # type: ignore[attr-defined]
        assert proc.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
        err = proc.stderr.read() if proc.stderr else ""
        assert "ready in" in err and "reloaded" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_with_two_workers_metrics_add_up_over_both(tmp_path: Path) -> None:
    spec = write(tmp_path, TOOLS % {"seconds": 0})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in _env().items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen([*LLMREC, "serve", str(spec), "--port", str(port), "--workers", "2",
                             "--reload-interval", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    try:
        wait_until_ready(url, proc, timeout=60)
        with httpx.Client(base_url=url, timeout=10) as client:
            answered = 0
            for _ in range(200):  # new connections: the kernel spreads them over the workers
                with httpx.Client(base_url=url, timeout=10) as one:
                    status = one.post("/v1/recommend", json={"items": ["a"]}).status_code
                assert status in (200, 503)  # 503: the other worker is still loading (/readyz asked the first)
                answered += status == 200
                if answered == 12:
                    break
                if status == 503:
                    time.sleep(0.05)
            assert answered == 12
            counts = set()
            for _ in range(6):  # whichever worker answers /metrics, it reports both workers' requests
                with httpx.Client(base_url=url, timeout=10) as one:
                    text = one.get("/metrics").text
                line = next(x for x in text.splitlines()
                            if x.startswith('llmrec_requests_total{') and 'endpoint="recommend"' in x
                            and 'code="200"' in x)
                counts.add(float(line.rsplit(" ", 1)[1]))
            assert counts == {12.0}
            assert client.get("/healthz").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's /usr/bin/chromium")
def test_playground_in_a_real_browser(tmp_path: Path) -> None:
    from llmrec.serve.app import ServeOptions, create_app

    app = create_app(ServeOptions(spec=str(write(tmp_path, SHOP)), reload_interval=0))
    with playground_page(app) as page:
        assert page.locator("#title").inner_text() == "small"
        assert page.locator("#graph svg .node").count() == 1 + 5 + 2  # inputs, nodes, outputs
        page.fill("input[name='user_id']", "u7")
        page.fill("input[name='k']", "4")
        page.click("#submit")
        page.wait_for_selector("#trace tbody tr", timeout=10_000)
        rows = page.locator("#trace tbody tr")
        assert rows.count() == 5
        trace = {rows.nth(i).locator("td").nth(0).inner_text(): rows.nth(i).locator("td").nth(2).inner_text()
                 for i in range(5)}
        assert set(trace) == {"profile", "popular", "unseen", "result", "turns"}
        assert set(trace.values()) <= {"ok", "cached"}
        outputs = json.loads(page.locator("#outputs").inner_text())
        assert outputs["recommendations"]["user_id"] == "u7"
        assert len(outputs["recommendations"]["items"]) == 4
        assert page.locator("#items .card").count() == 4
        assert page.locator("#graph .node.ok").count() >= 3  # the graph shows how each node did
        # a value the server refuses (the form's own min check taken off) shows its error and the field
        page.eval_on_selector("input[name='k']", "e => e.removeAttribute('min')")
        page.fill("input[name='k']", "0")
        page.click("#submit")
        page.wait_for_function("document.getElementById('form-error').textContent.includes('field: k')",
                               timeout=5_000)
        assert "invalid_input" in page.locator("#form-error").inner_text()


def test_a_client_that_disconnects_mid_body_is_not_a_server_error(tmp_path: Path) -> None:
    """A real client that sends half a body and hangs up: logged as a disconnect and counted as 499, never as
    an internal error with a traceback or a 500; the server keeps answering."""
    import socket

    spec = write(tmp_path, TOOLS % {"seconds": 0.0})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*LLMREC, "serve", str(spec), "--port", str(port), "--reload-interval", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        wait_until_ready(url, proc)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 500\r\n\r\n{\"items\": [")
            time.sleep(0.3)
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.post("/v1/recommend", json={"items": ["a"]}).status_code == 200
            metrics = client.get("/metrics").text
        assert 'status="500"' not in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "internal error" not in err and "Traceback" not in err, err[-2000:]
    assert "client disconnected" in err


def _read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 answer from a blocking socket: (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection without an answer (got {data!r})"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
               if line.lower().startswith(b"content-length:")]
    if not lengths:  # uvicorn's own 400 (Connection: close): the body runs to the end of the connection
        while chunk := sock.recv(65536):
            body += chunk
        return int(head.split()[1]), body
    while len(body) < lengths[0]:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection in the middle of an answer"
        body += chunk
    return int(head.split()[1]), body


def test_connections_are_never_reset_under_a_client_still_sending_and_idle_ones_close_after_the_keep_alive(
        tmp_path: Path) -> None:
    """Real sockets. A request uvicorn cannot parse (a bad Content-Length) while its client still has a body to
    send: the server answers 400 and then reads the rest before closing, so the client can send all of it and
    read the 400 (closing at once made the kernel reset the connection: 'broken pipe' on the client's next
    write, the answer lost). A body over --max-body with a Content-Length is a 413 on a connection that stays
    open for the next request. An idle connection is closed (FIN, not a reset) after --timeout-keep-alive."""
    import select

    spec = write(tmp_path, TOOLS % {"seconds": 0.0})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*LLMREC, "serve", str(spec), "--port", str(port), "--reload-interval", "0",
                             "--max-body", "1000", "--timeout-keep-alive", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    valid = b'{"items": ["a"]}'
    try:
        wait_until_ready(url, proc)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: abc\r\n\r\n")
                assert select.select([sock], [], [], 30)[0]  # the 400 is on its way: the server is closing
                sock.sendall(b"b" * 1_000_000)  # raised BrokenPipeError / ConnectionResetError before the fix
                sock.shutdown(socket.SHUT_WR)
                status, body = _read_answer(sock)
                assert status == 400 and b"Invalid HTTP request" in body  # and then a clean end, not a reset
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            big = b'{"items": ["' + b"z" * 5000 + b'"]}'
            for body, expected in ((big, 413), (valid, 200), (big, 413), (valid, 200)):  # one connection
                sock.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                assert _read_answer(sock)[0] == expected
            # idle: the server closes it after its keep-alive timeout, with a FIN
            sock.settimeout(None)
            assert select.select([sock], [], [], 30)[0]
            assert sock.recv(65536) == b""
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err[-2000:]
