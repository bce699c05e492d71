"""Helpers and pytest fixtures for testing specs and plugins (registered as the ``llmrec`` pytest plugin).

- :func:`run_spec` validates and runs a spec file or YAML text in one call;
- the ``llmrec_spec`` fixture writes YAML text to a temporary spec file and returns its path;
- :func:`free_port` and :func:`wait_until_ready` start-and-wait helpers for tests of a served spec.

Fixtures never load installed entry-point plugins unless a test asks for them (``LLMREC_LOAD_PLUGINS``).
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .api import arun, check, validate
from .errors import NodeTimeoutError, OutputValidationError, ProviderError
from .llm.provider import Completion, Message, Usage
from .llm.remote import with_choices
from .runtime.executor import Runtime
from .runtime.trace import RunResult


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until_ready(url: str, proc: Any = None, timeout: float = 30.0) -> None:
    """Poll ``url``/readyz until it answers 200 (``llmrec serve`` has loaded the spec); fails with the server's
    stderr if the ``subprocess.Popen`` ``proc`` exits first, or after ``timeout`` seconds."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url.rstrip("/") + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the server at {url} never became ready within {timeout:g} s")


def short_temp_dir(prefix: str = "llmrec-") -> str:
    """A new folder with a short path under the system's temporary folder, removed when the process exits: for
    Ray's session folder, whose AF_UNIX socket paths must stay under 108 bytes (pytest's tmp_path under
    pytest-xdist is too deep for them)."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix=prefix, dir="/tmp" if Path("/tmp").is_dir() else None)
    atexit.register(shutil.rmtree, folder, True)
    return folder


def write_spec(directory: Path, text: str, name: str = "spec.yaml") -> Path:
    """Write dedented YAML ``text`` to ``directory/name`` and return the path."""
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


async def run_spec(spec: str | Path, inputs: dict[str, Any] | None = None, trust: bool = False,
                   **kwargs: Any) -> RunResult:
    """Validate and run ``spec`` (a path) once; ``trust=True`` trusts its folder (its plugins/*.py and the schema
    and check files it names, llmrec/trust.py), as a plugin's own tests do."""
    return await arun(spec, inputs, trust, **kwargs)


def errors_of(spec: str | Path, trust: bool = False) -> list[str]:
    """The formatted errors `llmrec validate` would print for ``spec`` (``--trust`` with ``trust=True``)."""
    _, errors, _ = check(spec, trust=trust)
    return [e.format() for e in errors]


@pytest.fixture
def llmrec_spec(tmp_path: Path) -> Callable[..., Path]:
    """``llmrec_spec(yaml_text, name="spec.yaml") -> Path``: a spec file in a fresh temporary folder."""

    def make(text: str, name: str = "spec.yaml") -> Path:
        return write_spec(tmp_path, text, name)

    return make


# -- LLM test double -------------------------------------------------------------------------------------------


class FakeProvider:
    """A scripted :class:`~llmrec.llm.provider.Provider` for tests: no model, no network, deterministic.

    ``responses`` is a list consumed one per model call, or a callable ``fn(request) -> reply`` (it may be
    async, e.g. to sleep). A reply is text (possibly malformed JSON), a dict/list (sent as JSON), a pydantic
    model, or an exception (instance or class) to raise. With a schema the text is parsed like a real provider
    does: invalid JSON, a schema violation or a broken :class:`Choices` is re-asked (the next reply, with the
    error appended to the messages) up to ``request.max_retries`` times, then ``OutputValidationError``.
    ``requests`` records every request (re-asks included); usage counts whitespace-separated words.

        fake = FakeProvider(['not json', {"items": ["i1", "i2"]}])
        rt = Runtime(graph, resources={"model": fake})
    """

    name = "fake"

    def __init__(
        self,
        responses: Any = None,
        *,
        model: str = "fake-model",
        delay: float = 0.0,
        timeout: float | None = None,
        max_retries: int = 0,
        cost_per_token: float = 0.0,
        **_config: Any,
    ) -> None:
        self.model = model
        self.delay = delay
        self.timeout = timeout
        self.max_retries = max_retries
        self.cost_per_token = cost_per_token
        self._script = responses if callable(responses) else list(responses or [])
        self.requests: list[Any] = []
        self.closed = False

    @property
    def calls(self) -> int:
        """Model calls made so far (every attempt of every request)."""
        return len(self.requests)

    async def _reply(self, request: Any) -> Any:
        import inspect


        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if callable(self._script):
            reply = self._script(request)
            if inspect.isawaitable(reply):
                reply = await reply
        elif self._script:
            reply = self._script.pop(0)
        else:
            raise ProviderError(f"FakeProvider has no scripted response left (call {len(self.requests)})")
        if isinstance(reply, BaseException) or (isinstance(reply, type) and issubclass(reply, BaseException)):
            raise reply
        return reply

    def _usage(self, messages: Any, text: str) -> Any:
        prompt = sum(len(m.content.split()) for m in messages)
        completion = len(text.split())
        return Usage(prompt, completion, (prompt + completion) * self.cost_per_token)

    async def complete(self, request: Any) -> Any:
        try:
            async with asyncio.timeout(request.timeout):
                return await self._complete(request)
        except TimeoutError:
            raise NodeTimeoutError(f"model '{self.model}' gave no answer within {request.timeout:g}s") from None

    async def _complete(self, request: Any) -> Any:
        import dataclasses
        import json

        from pydantic import BaseModel, ValidationError


        usage, messages, text = Usage(), tuple(request.messages), ""
        schema = with_choices(request.schema, request.choices) if request.schema is not None else None
        attempts = request.max_retries + 1 if schema is not None else 1
        error = ""
        for attempt in range(1, attempts + 1):
            reply = await self._reply(dataclasses.replace(request, messages=messages))
            if isinstance(reply, BaseModel):
                text = reply.model_dump_json()
            elif isinstance(reply, (dict, list)):
                text = json.dumps(reply)
            else:
                text = str(reply)
            usage.add(self._usage(messages, text))
            if schema is None:
                return Completion(text, None, usage, attempt, self.model, self.name)
            try:
                parsed = schema.model_validate_json(text)
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                where = ".".join(str(p) for p in first["loc"])
                error = (f"{where}: " if where else "") + first["msg"]
                messages = (*messages, Message("assistant", text),
                            Message("user", f"Your answer was invalid ({error}). Answer again with valid JSON."))
                continue
            if type(parsed) is not request.schema:
                parsed = request.schema.model_validate(parsed.model_dump())
            return Completion(text, parsed, usage, attempt, self.model, self.name)
        err = OutputValidationError(
            f"model '{self.model}' gave no valid {request.schema.__name__} after {attempts} attempt"
            f"{'s' if attempts != 1 else ''}: {error}", attempts=attempts, last_raw=text)
        err.usage = usage  # type: ignore[attr-defined]
        raise err

    async def close(self) -> None:
        self.closed = True


async def run_with(spec: str | Path, inputs: dict[str, Any] | None = None, resources: dict[str, Any] | None = None,
                   trust: bool = False, **kwargs: Any) -> RunResult:
    """Validate and run ``spec`` once with some resources supplied (``{"model": FakeProvider([...])}``)."""
    rt = Runtime(validate(spec, trust=trust), resources=resources)
    try:
        return await rt.run(inputs, **kwargs)
    finally:
        await rt.close()
