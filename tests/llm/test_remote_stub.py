"""The litellm provider against a local OpenAI-compatible stub server started by the test (no network).

The stub serves /v1/chat/completions from a script of behaviours: valid JSON, malformed JSON, garbage, 5xx,
401 and a hang, so re-asks, retries, usage and cost accounting, timeouts and fallbacks are exercised end to end
through litellm and instructor.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import BaseModel

from llmrec.errors import NodeTimeoutError, OutputValidationError, ProviderError
from llmrec.llm.provider import Choices, CompletionRequest, Message
from llmrec.testing import run_with, write_spec

PROMPT_TOKENS, COMPLETION_TOKENS = 11, 7


class Stub:
    """A scripted OpenAI-compatible server: ``script`` holds (kind, content) pairs, one per request."""

    def __init__(self) -> None:
        self.script: list[tuple[str, str]] = []
        self.bodies: list[dict] = []
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.bodies.append(body)
                kind, content = stub.script.pop(0) if stub.script else ("ok", '{"items": []}')
                if kind == "hang":
                    stub.release.wait(10)
                    return
                if kind in ("500", "401"):
                    self._send(int(kind), {"error": {"message": f"stub says {kind}", "type": "server_error"}})
                    return
                self._send(200, {
                    "id": "chatcmpl-stub", "object": "chat.completion", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                              "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
                })

            def _send(self, status: int, data: dict) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.api_base = f"http://127.0.0.1:{self.server.server_port}/v1"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stub_server():
    server = Stub()
    yield server
    server.close()


@pytest.fixture
def stub(stub_server, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    stub_server.script.clear()
    stub_server.bodies.clear()
    return stub_server


class Recs(BaseModel):
    items: list[str]


def _provider(stub: Stub, model: str = "openai/stub", **config):
    from llmrec.llm.remote import litellm_factory

    config.setdefault("max_retries", 2)
    return litellm_factory(model=model, api_base=stub.api_base, api_key="sk-test", timeout=5,
                           backoff=0.01, **config)


def _request(max_retries: int = 2, **kw) -> CompletionRequest:
    return CompletionRequest(messages=(Message("system", "Be brief."), Message("user", "Recommend films.")),
                             schema=Recs, max_retries=max_retries, **kw)


async def test_valid_json_is_parsed_with_usage(stub) -> None:
    stub.script[:] = [("ok", '{"items": ["Solaris", "Dune"]}')]
    completion = await _provider(stub).complete(_request())
    assert completion.parsed == Recs(items=["Solaris", "Dune"]) and type(completion.parsed) is Recs
    assert completion.attempts == 1 and completion.provider == "litellm" and completion.model == "openai/stub"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    (body,) = stub.bodies
    assert body["model"] == "stub" and body["messages"][-1] == {"role": "user", "content": "Recommend films."}


async def test_malformed_json_then_valid_is_reasked_and_usage_summed(stub) -> None:
    stub.script[:] = [("ok", '{"items": ["Solaris",'), ("ok", '{"items": ["Solaris"]}')]
    completion = await _provider(stub).complete(_request())
    assert completion.parsed.items == ["Solaris"] and completion.attempts == 2
    assert completion.usage.prompt_tokens == 2 * PROMPT_TOKENS
    assert completion.usage.completion_tokens == 2 * COMPLETION_TOKENS
    assert len(stub.bodies) == 2 and len(stub.bodies[1]["messages"]) > len(stub.bodies[0]["messages"])


async def test_cost_is_summed_over_attempts_with_the_local_price_map(stub) -> None:
    import litellm

    stub.script[:] = [("ok", "not json"), ("ok", '{"items": ["Solaris"]}')]
    completion = await _provider(stub, model="openai/gpt-4o-mini").complete(_request())
    prices = litellm.model_cost["gpt-4o-mini"]
    one = PROMPT_TOKENS * prices["input_cost_per_token"] + COMPLETION_TOKENS * prices["output_cost_per_token"]
    assert completion.attempts == 2 and completion.usage.cost == pytest.approx(2 * one)


async def test_choices_outside_the_set_are_reasked(stub) -> None:
    stub.script[:] = [("ok", '{"items": ["X"]}'), ("ok", '{"items": ["i1", "i1"]}'), ("ok", '{"items": ["i2"]}')]
    request = _request(choices=(Choices("items[]", ("i1", "i2")),))
    completion = await _provider(stub).complete(request)
    assert completion.parsed.items == ["i2"] and completion.attempts == 3 and type(completion.parsed) is Recs
    reasks = [b["messages"][-1]["content"] for b in stub.bodies[1:]]
    assert "not among the allowed values" in reasks[0] and "more than once" in reasks[1]


async def test_garbage_every_time_ends_in_output_validation_error(stub) -> None:
    stub.script[:] = [("ok", "I am a teapot")] * 3
    with pytest.raises(OutputValidationError) as info:
        await _provider(stub).complete(_request(max_retries=2))
    assert info.value.attempts == 3 and info.value.last_raw == "I am a teapot"
    assert "gave no valid Recs after 3 attempts" in str(info.value) and "Invalid JSON" in str(info.value)
    assert info.value.usage.prompt_tokens == 3 * PROMPT_TOKENS


async def test_5xx_is_retried_then_a_provider_error(stub) -> None:
    stub.script[:] = [("500", "")] * 3
    with pytest.raises(ProviderError) as info:
        await _provider(stub, max_retries=2).complete(_request())
    assert len(stub.bodies) == 3 and "failed after 3 attempts" in str(info.value)
    assert "InternalServerError" in str(info.value)
    stub.script[:] = [("500", ""), ("ok", '{"items": ["Dune"]}')]
    completion = await _provider(stub, max_retries=2).complete(_request())
    assert completion.parsed.items == ["Dune"] and completion.attempts == 2


async def test_auth_error_and_unknown_provider_are_clear(stub) -> None:
    stub.script[:] = [("401", "")]
    with pytest.raises(ProviderError, match="authentication failed.*api_key"):
        await _provider(stub).complete(_request())
    assert len(stub.bodies) == 1  # not retried
    from llmrec.llm.remote import litellm_factory

    with pytest.raises(ProviderError, match="does not know which provider serves model 'nosuch-model'"):
        litellm_factory(model="nosuch-model")


async def test_free_text_and_a_hang_times_out(stub) -> None:
    stub.script[:] = [("ok", "Try Solaris.")]
    completion = await _provider(stub).complete(CompletionRequest(messages=(Message("user", "hi"),)))
    assert completion.text == "Try Solaris." and completion.parsed is None
    assert "response_format" not in stub.bodies[0]
    stub.script[:] = [("hang", "")]
    started = time.perf_counter()
    with pytest.raises(NodeTimeoutError, match="no answer within 0.3s"):
        await _provider(stub).complete(_request(timeout=0.3))
    assert time.perf_counter() - started < 2


async def test_spec_with_a_hanging_server_falls_back_within_the_timeout(stub, tmp_path) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "recs.py").write_text(
        "from pydantic import BaseModel\nclass Recs(BaseModel):\n    thinking: str = ''\n    items: list[str]\n")
    spec = write_spec(tmp_path, f"""
        name: stub
        inputs: {{liked: {{type: array, items: string}}}}
        resources:
          model:
            type: llm
            config: {{provider: litellm, model: openai/stub, api_base: "{stub.api_base}", api_key: sk-test,
                      timeout: 5s, max_retries: 1, extra: {{backoff: 0.01}}}}
        nodes:
          pick:
            type: llm.prompt
            config: {{template: "I liked {{{{ liked | join(', ') }}}}.", schema: schemas/recs.py:Recs,
                      reasoning_field: thinking}}
            inputs: {{model: "${{resources.model}}", liked: "${{inputs.liked}}"}}
            timeout: 400ms
            fallback: {{value: {{items: [popular]}}}}
        outputs: {{items: "${{pick.items}}"}}
    """)
    stub.script[:] = [("ok", "nope"), ("ok", '{"thinking": "sci-fi fan", "items": ["Solaris"]}')]
    result = await run_with(spec, {"liked": ["Alien"]})
    assert result.outputs == {"items": ["Solaris"]} and not result.degraded
    assert "Alien" in stub.bodies[0]["messages"][-1]["content"]
    stub.script[:] = [("hang", "")]
    started = time.perf_counter()
    result = await run_with(spec, {"liked": ["Alien"]})
    assert time.perf_counter() - started < 2
    assert result.outputs == {"items": ["popular"]} and result.degraded
    rec = result.trace.node("pick")
    assert rec.status == "fallback" and "timed out after 0.4s" in rec.fallback_reason
