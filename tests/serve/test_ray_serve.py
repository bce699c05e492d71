"""`llmrec serve SPEC --engine ray --replicas 2` for real: a subprocess on a local Ray (2 CPUs, no dashboard,
its temp folder under tmp), hit over HTTP by httpx, answering as the local engine's app does; sessions in a real
redis-server are shared by the two replicas; SIGTERM shuts Ray Serve down with exit 0.

Ray Serve is part of the test extra: when it is missing these tests fail (they are not skipped)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmrec.serve.app import ServeOptions, create_app
from llmrec.testing import short_temp_dir

from .conftest import SHOP, wait_ready, write

ROOT = Path(__file__).resolve().parents[2]
LLMREC = str(Path(sys.executable).with_name("llmrec"))
KEY = "ray-key"
AUTH = {"X-API-Key": KEY}
# Ray Serve's own config models use pydantic features pydantic 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
REQUESTS: list[dict[str, Any]] = [{"user_id": f"u{i}", "k": 1 + i % 4} for i in range(1, 9)] + [{"user_id": "new"}]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    import shutil
    import socket

    exe = shutil.which("redis-server")
    assert exe is not None, "redis-server is not installed (apt-get install redis-server; .ci/run installs it)"
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder), "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise AssertionError("redis-server did not start")


class RayServer:
    def __init__(self, proc: subprocess.Popen[str], url: str, spec: Path, metrics: Path) -> None:
        self.proc, self.url, self.spec, self.metrics = proc, url, spec, metrics
        self.stopped: tuple[int, str] | None = None

    def stop(self) -> tuple[int, str]:
        if self.stopped is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                _, err = self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate()
            self.stopped = (self.proc.returncode, err)
        return self.stopped


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayServer]:
    import ray.serve  # noqa: F401 - fails (not skips) when the extra is missing

    folder = tmp_path_factory.mktemp("ray-serve")
    spec = write(folder, SHOP)
    redis, redis_port = _start_redis(folder / "redis")
    port = _free_port()
    metrics = folder / "metrics"
    metrics.mkdir()
    env = {**os.environ, "LLMREC_LOAD_PLUGINS": "", "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0",
           "RAY_TMPDIR": short_temp_dir(), "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    proc = subprocess.Popen([LLMREC, "serve", str(spec), "--engine", "ray", "--replicas", "2", "--port", str(port),
                             "--api-key", KEY, "--reload-interval", "0", "--session-store", "redis",
                             "--session-url", f"redis://127.0.0.1:{redis_port}/0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    server = RayServer(proc, f"http://127.0.0.1:{port}", spec, metrics)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"serve --engine ray exited with {proc.returncode}: {proc.communicate()[1]}")
            try:
                if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("serve --engine ray never became ready")
        yield server
    finally:
        server.stop()
        redis.kill()
        redis.wait(10)


@pytest.fixture(scope="module")
def local_answers(ray_server: RayServer) -> dict[str, Any]:
    """What the local engine's app answers to the same requests (in-process, its lifespan run)."""
    return asyncio.run(_local_answers(ray_server.spec))


async def _local_answers(spec: Path) -> dict[str, Any]:
    app = create_app(ServeOptions(spec=str(spec), api_key=KEY, reload_interval=0))
    out: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=AUTH) as client:
            await wait_ready(client)
            out["recommend"] = [(r.status_code, r.json()) for r in
                                [await client.post("/v1/recommend", json=body) for body in REQUESTS]]
            out["batch"] = (await client.post("/v1/recommend/batch", json={"requests": REQUESTS[:4]})).json()
            out["bad"] = (await client.post("/v1/recommend", json={"user_id": "u1", "k": 0})).json()
            out["openapi"] = (await client.get("/openapi.json")).json()
    return out


def _without_id(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "request_id"}


def test_recommend_and_batch_answer_what_the_local_engine_answers(ray_server: RayServer,
                                                                  local_answers: dict[str, Any]) -> None:
    with httpx.Client(base_url=ray_server.url, headers=AUTH, timeout=20) as client:
        got = [(r.status_code, r.json()) for r in [client.post("/v1/recommend", json=body) for body in REQUESTS]]
        batch = client.post("/v1/recommend/batch", json={"requests": REQUESTS[:4]}).json()
    assert got == local_answers["recommend"]
    assert all(code == 200 and body["outputs"]["recommendations"]["items"] for code, body in got)
    # each result's request_id differs, and under Ray Serve it is the id Ray's proxy gives the request (its
    # x-request-id header, as a client's own X-Request-Id would be), so that llmrec's log and Ray's correlate
    assert [_without_id(r) for r in batch["results"]] == [_without_id(r) for r in local_answers["batch"]["results"]]
    assert all(r["request_id"] for r in batch["results"])
    # both replicas answered (each writes its own Prometheus files into the shared folder) and loaded the spec
    pids = {p.stem.rsplit("_", 1)[-1] for p in ray_server.metrics.glob("*.db")}
    assert len(pids) >= 2, sorted(p.name for p in ray_server.metrics.glob("*.db"))


def test_errors_auth_probes_and_openapi_are_the_local_engines(ray_server: RayServer,
                                                             local_answers: dict[str, Any]) -> None:
    url = ray_server.url
    bad = httpx.post(url + "/v1/recommend", json={"user_id": "u1", "k": 0}, headers=AUTH, timeout=20)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "k"
    assert bad.json() == local_answers["bad"]
    broken = httpx.post(url + "/v1/recommend", content=b"{nope", headers=AUTH, timeout=20)
    assert broken.status_code == 400 and broken.json()["error"]["type"]
    denied = httpx.post(url + "/v1/recommend", json={"user_id": "u1"}, timeout=20)
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "unauthorized"
    assert httpx.get(url + "/readyz", timeout=20).status_code == 200
    assert httpx.get(url + "/healthz", timeout=20).status_code == 200
    assert httpx.get(url + "/openapi.json", timeout=20).json() == local_answers["openapi"]
    metrics = httpx.get(url + "/metrics", headers=AUTH, timeout=20)
    assert metrics.status_code == 200 and 'llmrec_requests_total{code="401",endpoint="recommend"}' in metrics.text


def test_a_session_in_redis_is_shared_by_the_replicas(ray_server: RayServer) -> None:
    sid = {**AUTH, "X-Session-Id": "ray-alice"}
    with httpx.Client(base_url=ray_server.url, headers=sid, timeout=20) as client:
        turns = [client.post("/v1/recommend", json={"user_id": "u3"}).json() for _ in range(6)]
    # six turns over two replicas (Ray's proxy spreads them): each saw every earlier turn
    assert [t["turn"] for t in turns] == [1, 2, 3, 4, 5, 6]
    assert [t["outputs"]["earlier_turns"] for t in turns] == [str(i) for i in range(6)]


def test_sigterm_shuts_ray_serve_down_with_exit_0(ray_server: RayServer) -> None:
    time.sleep(0.5)
    code, err = ray_server.stop()
    assert code == 0, err
    assert "shutting Ray Serve down" in err and "Traceback" not in err
    with pytest.raises(httpx.TransportError):
        httpx.get(ray_server.url + "/healthz", timeout=2)


def test_engine_options_are_checked_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    from llmrec.serve.commands import check_engine_options

    assert check_engine_options(None, 2, None, None, None, None, None) is None  # the local engine, unchanged
    cases = [(("ray", 2, None, None, None, None, None), "--workers"),
             (("local", 1, None, 3, None, None, None), "--replicas"),
             ((None, 1, "auto", None, None, None, None), "--address"),
             (("ray", 1, None, None, 2, None, None), "--min-replicas"),
             (("ray", 1, None, None, 3, 2, None), "--min-replicas"),
             (("fast", 1, None, None, None, None, None), "--engine")]
    for args, option in cases:
        with pytest.raises(typer.BadParameter) as info:
            check_engine_options(*args)
        assert option in str(info.value) or option in (info.value.param_hint or ""), (args, info.value)
    settings = check_engine_options("ray", 1, None, None, 1, 4, 0.5)
    assert settings.autoscaling(64) == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
                                        "target_ongoing_requests": 32}
    assert settings.num_cpus_per_replica == 0.5
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(typer.BadParameter) as info:
        check_engine_options("ray", 1, None, 2, None, None, None)
    assert "pip install 'llmrec[ray]'" in str(info.value)


def test_the_specs_serving_block_fills_in_what_the_command_line_leaves_out() -> None:
    from llmrec.serve.commands import check_engine_options
    from llmrec.spec.models import ServingSpec

    serving = ServingSpec(engine="ray", min_replicas=1, max_replicas=3, num_cpus_per_replica=2)
    from_spec = check_engine_options(None, 1, None, None, None, None, None, serving=serving)
    assert (from_spec.min_replicas, from_spec.max_replicas, from_spec.num_cpus_per_replica) == (1, 3, 2)
    fixed = check_engine_options(None, 1, None, 4, None, None, 0.5, serving=serving)  # the options win
    assert (fixed.replicas, fixed.min_replicas, fixed.autoscaling(64), fixed.num_cpus_per_replica) == (4, None, None,
                                                                                                       0.5)
    assert check_engine_options("local", 2, None, None, None, None, None, serving=serving) is None  # --engine wins
    with pytest.raises(ValueError, match="together"):
        ServingSpec(engine="ray", min_replicas=1)


def test_the_replica_builds_the_app_from_json_options(tmp_path: Path) -> None:
    from llmrec.serve.ray_engine import Replica

    spec = write(tmp_path, SHOP)
    options = ServeOptions(spec=str(spec), api_key=KEY, rating_range=(1.0, 5.0))
    app = Replica(json.dumps(dataclasses.asdict(options))).__serve_build_asgi_app__()
    assert app.state.server.options.rating_range == (1.0, 5.0) and app.state.server.options.api_key == KEY
