"""What every LLM provider implements, and what an LLM call returns.

A provider turns chat messages (and, optionally, an output schema) into a :class:`Completion`. Providers are
plugins: ``@hookimpl def llmrec_register_providers(register): register("litellm", factory)``, where
``factory(**config) -> Provider``. Spec authors reach them through an ``llm`` resource::

    resources:
      model: {type: llm, config: {provider: litellm, model: "openai/gpt-4o-mini", timeout: 20s}}

Nodes (``llm.prompt`` and the task nodes built on it) call ``await provider.complete(request)`` and record the
returned usage, cost and attempts in their trace record. Structured output is the provider's job: a remote
provider validates with instructor and re-asks; a local one constrains decoding so invalid output cannot occur.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Choices:
    """A closed set the output must come from: e.g. item ids of a catalog for a field of the schema.

    ``path`` names the schema field (dotted, ``[]`` for list elements: ``"items[].id"``) whose values must be one
    of ``values``; ``unique`` forbids the same value twice in that list. Local providers enforce it while
    decoding; remote ones validate after parsing (and re-ask).
    """

    path: str
    values: tuple[str, ...]
    unique: bool = True


@dataclass(frozen=True)
class ItemContext:
    """The items behind a request, for providers that model item ids rather than text (a rec-LM).

    ``history`` is the user's (item id, rating or None) pairs, oldest first. ``path`` names the :class:`Choices`
    whose values stand for items and ``ids`` gives the item id of each of its values, in the same order (the
    values may be titles). Text providers ignore it; a provider that reads it answers from it.
    """

    history: tuple[tuple[str, float | None], ...]
    path: str
    ids: tuple[str, ...]


@dataclass(frozen=True)
class CompletionRequest:
    messages: tuple[Message, ...]
    schema: type[BaseModel] | None = None  # None: free text
    choices: tuple[Choices, ...] = ()
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    timeout: float | None = None  # seconds for this call, all attempts together
    max_retries: int = 0  # re-asks on validation errors (remote) / retries on transient errors
    extra: dict[str, Any] = field(default_factory=dict)  # provider-specific parameters
    items: ItemContext | None = None  # the user's history and the items behind the choices, when there are some


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0  # USD, when the provider knows prices; 0 otherwise

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost += other.cost


@dataclass
class Completion:
    """What one ``complete`` call produced: the raw text, the parsed object (when a schema was given), the
    usage summed over every attempt (re-asks and retries included) and the number of attempts."""

    text: str
    parsed: BaseModel | None = None
    usage: Usage = field(default_factory=Usage)
    attempts: int = 1
    model: str = ""
    provider: str = ""
    cached: bool = False
    #: the model's score of each value of the answer's choices it ranked (e.g. a log-probability), when it has one
    scores: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Provider(Protocol):
    """An LLM behind one interface. ``name`` is the registered provider name, ``model`` the model it calls.

    Optional: ``count_tokens(text) -> int`` (the model's own tokenizer; token budgets use it, else about 4
    characters a token). A provider llmrec trains also has, on its registered factory, the training contract's
    ``trains_on``, ``training_params(options)`` and ``fit(options, ctx)`` (see :mod:`llmrec.llm.reclm_provider`)."""

    name: str
    model: str

    async def complete(self, request: CompletionRequest) -> Completion: ...

    async def close(self) -> None: ...


__all__ = ["Choices", "Completion", "CompletionRequest", "ItemContext", "Message", "Provider", "Role", "Usage"]
