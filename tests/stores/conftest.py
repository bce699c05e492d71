"""A real ``redis-server`` for the Redis store tests: started on a free port in a temporary folder, with no
persistence (``--save '' --appendonly no``) and a password, and stopped afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmrec.testing import free_port

PASSWORD = "s3cret-pw"


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_redis(folder: Path) -> RedisServer:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: the Redis store tests need it (apt-get install redis-server; "
                    ".ci/run installs it)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder), "--requirepass", PASSWORD, "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"redis-server exited with {proc.returncode} on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return RedisServer(port, proc)
        except OSError:
            time.sleep(0.02)
    proc.kill()
    pytest.fail("redis-server did not start listening within 10 s")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
