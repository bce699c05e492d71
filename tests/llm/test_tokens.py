"""Token budgets count the model's own tokens: the transformers provider with its tokenizer, the litellm one with
litellm's counter (never downloading a tokenizer), a routed provider with its first route's."""

from __future__ import annotations

import math
import socket
import threading

import pytest

from llmrec.llm.local import TransformersProvider
from llmrec.llm.routing import Route, RoutedProvider
from llmrec.nodes.llm import Prompt, PromptConfig, estimate_tokens
from llmrec.testing import FakeProvider

TEXT = "Amélie and Zoë watched a naïve space comedy by the river, twice."


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    return TransformersProvider(str(tiny_model_dir))


def test_the_local_provider_counts_with_its_tokenizer_without_loading_the_model(local):
    n = local.count_tokens(TEXT)
    assert local._loaded is None  # the tokenizer alone was loaded
    tok = local.tokenizer()
    assert n == len(tok(TEXT, add_special_tokens=False)["input_ids"]) and n != math.ceil(len(TEXT) / 4)
    assert local.count_tokens("") == 0
    assert estimate_tokens(TEXT, local) == n
    local.load()  # the model reuses the tokenizer already loaded
    assert local.tokenizer() is tok and local.count_tokens(TEXT) == n


def test_truncation_keeps_what_fits_in_real_tokens(local):
    history = [f"Zoë's naïve film number {i}" for i in range(40)]
    cfg = PromptConfig(template="History:\n{% for h in history %}- {{ h }}\n{% endfor %}Suggest one.",
                       token_budget=120, truncate="history")
    messages, info = Prompt(cfg).messages({"history": history}, local)
    user = messages[-1].content
    assert local.count_tokens(user) <= 120 and 0 < info["kept"] < 40
    full = Prompt(cfg.model_copy(update={"token_budget": None, "truncate": None}))
    one_more = full.messages({"history": history[-info["kept"] - 1:]}, local)[0][-1].content
    assert local.count_tokens(one_more) > 120
    # the 4-characters rule would have kept a different number of items
    rough = Prompt(cfg).messages({"history": history}, None)[1]["kept"]
    assert rough != info["kept"]


class _Counting(FakeProvider):
    def count_tokens(self, text: str) -> int:
        return len(text.split())


def test_a_routed_provider_counts_with_its_first_route():
    first, second = _Counting([]), FakeProvider([])
    assert RoutedProvider([Route(first), Route(second)]).count_tokens("a b c d e f g h") == 8
    assert RoutedProvider([Route(second), Route(first)]).count_tokens("a b c d e f g h") == 4  # 15 chars / 4
    assert estimate_tokens("a b c", RoutedProvider([Route(first)])) == 3


# -- litellm ---------------------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    """No name lookups, no connections, no Hugging Face tokenizer downloads: each attempt is recorded."""
    pytest.importorskip("litellm")
    import litellm.utils

    attempts: list[str] = []

    def refuse(what):
        def fail(*args, **kwargs):
            attempts.append(what)
            raise OSError(f"{what}: no network in this test")
        return fail

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(litellm.utils.tokenizer_dispatch, "from_pretrained", refuse("from_pretrained"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # as on a user's machine: litellm would try the Hub
    return attempts


MODELS = ["openai/gpt-4o-mini", "groq/llama-3.1-8b-instant", "replicate/meta/llama-2-70b-chat",
          "together_ai/meta-llama/Llama-3-70b", "ollama/llama3.1", "anthropic/claude-3-5-haiku-latest",
          "deepseek/deepseek-chat"]


def test_litellm_counts_offline_and_never_downloads_a_tokenizer(offline):
    from llmrec.llm.remote import LiteLLMProvider

    threads = {t.name for t in threading.enumerate()}
    counts = {m: LiteLLMProvider(m).count_tokens(TEXT) for m in MODELS}
    assert offline == []
    assert {t.name for t in threading.enumerate()} - threads == set()  # no background retry of a download
    assert LiteLLMProvider("openai/gpt-4o-mini").count_tokens("hello world") == 2  # tiktoken cl100k_base
    tiktoken = counts["openai/gpt-4o-mini"]
    assert counts["groq/llama-3.1-8b-instant"] == tiktoken  # its Hub tokenizer would need a download
    assert counts["replicate/meta/llama-2-70b-chat"] == tiktoken
    assert all(n > 0 for n in counts.values())
    assert LiteLLMProvider("openai/gpt-4o-mini").count_tokens("") == 0


def test_litellm_counting_falls_back_to_characters(offline, monkeypatch):
    import litellm

    from llmrec.llm.remote import LiteLLMProvider

    monkeypatch.setattr(litellm, "disable_token_counter", True)  # token_counter answers 0
    assert LiteLLMProvider("openai/gpt-4o-mini").count_tokens(TEXT) == math.ceil(len(TEXT) / 4)
    monkeypatch.setattr(litellm, "disable_token_counter", False)

    def broken(**kwargs):
        raise RuntimeError("no tokenizer")

    monkeypatch.setattr(litellm, "token_counter", broken)
    assert LiteLLMProvider("openai/gpt-4o-mini").count_tokens(TEXT) == math.ceil(len(TEXT) / 4)


def test_a_spec_budget_uses_the_litellm_count(offline):
    from llmrec.llm.remote import LiteLLMProvider

    provider = LiteLLMProvider("openai/gpt-4o-mini")
    history = [f"Film number {i} with a long title" for i in range(40)]
    cfg = PromptConfig(template="History:\n{% for h in history %}- {{ h }}\n{% endfor %}Suggest one.",
                       token_budget=60, truncate="history")
    messages, info = Prompt(cfg).messages({"history": history}, provider)
    assert provider.count_tokens(messages[-1].content) <= 60 < provider.count_tokens(
        Prompt(cfg.model_copy(update={"token_budget": None, "truncate": None})).messages(
            {"history": history[-info["kept"] - 1:]}, provider)[0][-1].content)
    assert offline == []
