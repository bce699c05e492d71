"""Small specs for the serving tests: the demo shop with a cached popular list, plus node types from a local
plugin (slow, failing, LLM-like, grounded) so that limits, failures and metrics can be exercised quickly."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmrec.serve.app import ServeOptions, create_app
from llmrec.testing import free_port, wait_until_ready

#: Debian's Chromium, which the browser tests drive headless (.ci/run installs it)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

PLUGIN = '''
import asyncio
from typing import Any
from pydantic import BaseModel, ConfigDict
import llmrec


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = 0.0
    tokens: int = 0


class Sleep(llmrec.NodeType):
    """Waits, then passes its value on (and reports LLM-like usage when `tokens` is set)."""
    name = "servetest.sleep"
    Config = _Cfg
    reports = llmrec.Reports(model_usage=True)

    async def run(self, value: Any = None, context: llmrec.RunContext | None = None) -> list[str]:
        await asyncio.sleep(self.config.seconds)
        if self.config.tokens and context is not None and context.record is not None:
            context.record.usage = llmrec.ModelUsage(model="fake-model", calls=1, prompt_tokens=self.config.tokens,
                                                     completion_tokens=5, cost=0.001)
        return list(value or [])


class Fail(llmrec.NodeType):
    name = "servetest.fail"
    Config = _Cfg

    async def run(self, value: Any = None) -> list[str]:
        raise ValueError("boom")


@llmrec.hookimpl
def llmrec_register_node_types(register):
    register(Sleep)
    register(Fail)
'''

SHOP = """
name: small
description: Popular items a user has not seen, from the demo shop.
inputs:
  user_id: {type: string, examples: [u1], description: A demo user (u1 ... u120).}
  k: {type: integer, default: 3, minimum: 1, maximum: 50}
  history: {type: array, items: object, default: []}
resources:
  shop:
    type: dataset
    config: {name: demo, seed: 7, split: user}
nodes:
  profile:
    type: user.profile
    inputs:
      catalog: ${resources.shop.catalog}
      interactions: ${resources.shop.train}
      user_id: ${inputs.user_id}
  popular:
    type: retrieve.popular
    config: {k: 50}
    inputs: {interactions: "${resources.shop.train}"}
    cache: {ttl: 60s}
  unseen:
    type: rerank.filter_seen
    inputs: {candidates: "${popular}", profile: "${profile}"}
  result:
    type: present.items
    inputs: {candidates: "${unseen}", catalog: "${resources.shop.catalog}", profile: "${profile}", k: "${inputs.k}"}
  turns:
    type: text.template
    config: {template: "{{ history | length }}"}
    inputs: {history: "${inputs.history}"}
outputs:
  recommendations: ${result}
  earlier_turns: ${turns}
"""

TOOLS = """
name: tools
inputs:
  items: {type: array, items: string, default: []}
  seconds: {type: number, default: 0}
nodes:
  slow:
    type: servetest.sleep
    config: {seconds: %(seconds)s}
    inputs: {value: "${inputs.items}"}
  llm:
    type: servetest.sleep
    config: {tokens: 12}
    inputs: {value: "${slow}"}
  broken:
    type: servetest.fail
    inputs: {value: "${inputs.items}"}
    fallback: {value: []}
outputs:
  items: ${llm}
  fallback: ${broken}
"""

FAILING = """
name: failing
inputs:
  items: {type: array, items: string, default: []}
nodes:
  broken:
    type: servetest.fail
    inputs: {value: "${inputs.items}"}
outputs:
  items: ${broken}
"""


def write(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    (folder / "plugins").mkdir(exist_ok=True)
    (folder / "plugins" / "servetest.py").write_text(PLUGIN, encoding="utf-8")
    path = folder / name
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


async def wait_ready(client: httpx.AsyncClient, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if (await client.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the server never became ready")


@pytest.fixture
def serve(tmp_path: Path) -> Callable[..., Any]:
    """``async with serve(spec_text, **options) as client``: the app in-process, lifespan run, resources
    loaded; ``client.server`` is the :class:`~llmrec.serve.app.Server`."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def make(text: str = SHOP, ready: bool = True, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
        path = write(tmp_path, text)
        options.setdefault("reload_interval", 0)
        app = create_app(ServeOptions(spec=str(path), **options))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                client.server = app.state.server  # type: ignore[attr-defined]
                client.spec_path = path  # type: ignore[attr-defined]
                if ready:
                    await wait_ready(client)
                yield client

    return make


@contextmanager
def playground_page(app: Any) -> Iterator[Any]:
    """``app`` served by uvicorn in a thread on a free port, and a page of headless Chromium that has opened its
    playground (``body[data-ready='1']``); both are stopped afterwards."""
    playwright = pytest.importorskip("playwright.sync_api")
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until_ready(f"http://127.0.0.1:{port}")
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector("body[data-ready='1']", timeout=10_000)
                yield page
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
