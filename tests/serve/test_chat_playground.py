"""The playground's chat mode in a real browser (Debian's headless Chromium, as tests/serve/test_server.py's
playground test): specs/headphones_chat.yaml served, two turns typed into the chat, the session id kept, the state
shown beside the chat and updated each turn (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmrec.plugins import get_registry
from llmrec.graph.build import build
from llmrec.spec.loader import load_spec

from .conftest import CHROMIUM, playground_page

SPEC = Path(__file__).resolve().parents[2] / "specs" / "headphones_chat.yaml"


def _graph():
    return build(load_spec(SPEC), get_registry(SPEC.parent))


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's /usr/bin/chromium")
def test_playground_chat_in_a_real_browser() -> None:
    from llmrec.serve.app import ServeOptions, create_app

    app = create_app(ServeOptions(spec=str(SPEC), reload_interval=0), _graph())
    with playground_page(app) as page:
        assert page.locator("#title").inner_text() == "headphones-chat"
        assert page.locator("#chat").is_visible() and not page.locator("#submit").is_visible()
        assert page.locator("input[name='message']").count() == 0  # typed in the chat, not the form
        sid = page.locator("#chat-session").inner_text()
        assert sid.startswith("chat-") and page.locator("#opt-session").input_value() == sid
        assert json.loads(page.locator("#chat-state").inner_text())["turn"] == 0
        page.fill("#chat-input", "I need headphones")
        page.click("#chat-send")
        page.wait_for_selector("#chat-log .msg.assistant", timeout=10_000)
        first = page.locator("#chat-log .msg.assistant").nth(0).inner_text()
        assert "?" in first and "degraded" in first
        state = json.loads(page.locator("#chat-state").inner_text())
        assert state["turn"] == 1 and len(state["asked"]) == 1
        page.fill("#chat-input", "wireless earbuds for the gym under $80")
        page.click("#chat-send")
        page.wait_for_function("document.querySelectorAll('#chat-log .msg.assistant').length == 2",
                               timeout=10_000)
        state = json.loads(page.locator("#chat-state").inner_text())
        assert state["turn"] == 2 and state["slots"]["budget"] == 80
        assert page.locator("#chat-session").inner_text() == sid  # the same conversation
        assert page.locator("#chat-log .msg.user").count() == 2
        assert page.locator("#items .card").count() >= 1  # the recommended items
        assert page.locator("#trace tbody tr").count() >= 5
        page.click("#chat-new")
        assert page.locator("#chat-session").inner_text() != sid
        assert page.locator("#chat-log .msg").count() == 0
        assert json.loads(page.locator("#chat-state").inner_text())["turn"] == 0
