"""``llmrec serve --session-store redis`` for real: two server processes sharing one redis-server see one session
(turn 1 on one, turn 2 on the other), a Redis killed mid-serve leaves answers 200 that say the session was not
kept, and a Redis down at startup is a CLI error naming the URL with its password masked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from llmrec.cli import main
from llmrec.testing import write_spec
from llmrec.testing import wait_until_ready

from .conftest import PASSWORD, free_port, start_redis

ROOT = Path(__file__).resolve().parents[2]
LLMREC = str(Path(sys.executable).with_name("llmrec"))

CHAT = """
name: chat
inputs:
  q: {type: string, default: ""}
  history: {type: array, items: object, default: []}
nodes:
  turns:
    type: text.template
    config: {template: "{{ history | length }}"}
    inputs: {history: "${inputs.history}"}
outputs:
  earlier_turns: ${turns}
"""


def _serve(spec: Path, port: int, url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "LLMREC_LOAD_PLUGINS": "", "PYTHONUNBUFFERED": "1", "LLMREC_REDIS_URL": url}
    return subprocess.Popen([LLMREC, "serve", str(spec), "--port", str(port), "--reload-interval", "0",
                             "--session-store", "redis"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_two_servers_share_sessions_and_answer_when_redis_dies(tmp_path: Path) -> None:
    redis_server = start_redis(tmp_path / "redis")  # this test's own: it kills it
    spec = write_spec(tmp_path, CHAT)
    ports = [free_port(), free_port()]
    procs = [_serve(spec, port, redis_server.url) for port in ports]  # started together: they load in parallel
    errs = ["", ""]
    try:
        a, b = (f"http://127.0.0.1:{port}" for port in ports)
        wait_until_ready(a, procs[0], timeout=60)
        wait_until_ready(b, procs[1], timeout=60)
        sid = {"X-Session-Id": "alice"}
        first = httpx.post(a + "/v1/recommend", json={"q": "hi"}, headers=sid, timeout=10)
        assert first.status_code == 200 and first.json()["turn"] == 1
        assert first.json()["outputs"]["earlier_turns"] == "0" and "session_kept" not in first.json()
        second = httpx.post(b + "/v1/recommend", json={"q": "more"}, headers=sid, timeout=10)  # the other server
        assert second.status_code == 200
        assert second.json()["turn"] == 2 and second.json()["outputs"]["earlier_turns"] == "1"
        assert "X-Llmrec-Session" not in second.headers

        redis_server.stop()  # Redis dies mid-serve
        for url in (a, b):
            answer = httpx.post(url + "/v1/recommend", json={"q": "again"}, headers=sid, timeout=10)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["session_kept"] is False and answer.headers["X-Llmrec-Session"] == "not-kept"
            assert body["outputs"]["earlier_turns"] == "0"  # answered without the session
            plain = httpx.post(url + "/v1/recommend", json={"q": "no session"}, timeout=10)
            assert plain.status_code == 200 and "session_kept" not in plain.json()  # sessionless: unaffected
    finally:
        errs = [_stop(p) for p in procs]
        redis_server.stop()
    assert all("session store: load failed" in err for err in errs), errs
    assert not any(PASSWORD in err for err in errs)  # the password never reaches the log


def test_serve_refuses_to_start_when_redis_is_down_naming_the_masked_url(tmp_path: Path, capsys) -> None:
    spec = write_spec(tmp_path, CHAT)
    dead = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    code = main(["serve", str(spec), "--session-store", "redis", "--session-url", dead])
    err = capsys.readouterr().err
    assert code == 2 and "--session-url" in err
    assert f"redis://:***@127.0.0.1:{dead.rsplit(':', 1)[1]}" in " ".join(err.split()).replace("│", "")
    assert PASSWORD not in err and "start Redis" in err


def test_a_url_needs_a_store_that_takes_one(tmp_path: Path, capsys) -> None:
    spec = write_spec(tmp_path, CHAT)
    assert main(["serve", str(spec), "--session-url", "redis://127.0.0.1:1/0"]) == 2
    assert "takes no URL" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _no_plugins(monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_LOAD_PLUGINS", "")
