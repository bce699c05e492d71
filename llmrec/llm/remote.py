"""The remote provider: any model litellm can reach, with instructor for schema-validated output.

``LiteLLMProvider(model="openai/gpt-4o-mini", timeout=20, max_retries=2)`` sends chat messages through
``litellm.acompletion``. With a schema, instructor parses the answer into the pydantic model and re-asks the
model with the validation error, up to ``max_retries`` times; :class:`~llmrec.llm.provider.Choices` are checked
by a validator on a derived model, so a value outside the set (or a duplicate) is re-asked too. Transient
failures (5xx, connection errors, rate limits) are retried up to ``max_retries`` times with a short backoff.
Every HTTP call is counted: ``Completion.attempts`` and the usage and cost summed over all of them.

litellm and instructor are imported on first use (they take about a second), never at import time, and the
price map is the one bundled with litellm (``LITELLM_LOCAL_MODEL_COST_MAP``): nothing is fetched.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, model_validator

from ..errors import LlmrecError, NodeTimeoutError, OutputValidationError, ProviderError
from .provider import Choices, Completion, CompletionRequest, Usage

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

#: instructor modes by the names a spec may give under ``extra: {mode: ...}``
MODES = ("json", "md_json", "tools", "json_schema")


# -- choices: a derived model that validates the closed sets ---------------------------------------------------


def values_at(obj: Any, path: str) -> list[Any]:
    """The values at a dotted ``path`` of a parsed object; ``name[]`` walks every element of a list field."""
    current = [obj]
    for part in path.split("."):
        many = part.endswith("[]")
        name = part[:-2] if many else part
        following: list[Any] = []
        for value in current:
            if name:
                value = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
            if value is None:
                continue
            if many:
                following.extend(value)
            else:
                following.append(value)
        current = following
    return current


def choice_problems(obj: Any, choices: tuple[Choices, ...]) -> list[str]:
    """Why ``obj`` breaks ``choices`` (values outside the set, duplicates); empty when it does not."""
    problems = []
    for choice in choices:
        values = values_at(obj, choice.path)
        allowed = set(choice.values)
        bad = [v for v in values if str(v) not in allowed]
        if bad:
            shown = ", ".join(repr(v) for v in bad[:5])
            problems.append(f"{choice.path}: {shown} {'is' if len(bad) == 1 else 'are'} not among the allowed values")
        if choice.unique:
            seen: set[str] = set()
            dups = [v for v in values if str(v) in seen or seen.add(str(v))]  # type: ignore[func-returns-value]
            if dups:
                problems.append(f"{choice.path}: {', '.join(repr(v) for v in dups[:5])} appear more than once")
    return problems


_DERIVED: dict[tuple[type[BaseModel], tuple[Choices, ...]], type[BaseModel]] = {}


def with_choices(schema: type[BaseModel], choices: tuple[Choices, ...]) -> type[BaseModel]:
    """A subclass of ``schema`` whose validation also enforces ``choices`` (cached; ``schema`` when none)."""
    if not choices:
        return schema
    key = (schema, tuple(choices))
    derived = _DERIVED.get(key)
    if derived is None:

        def _check_choices(self: Any) -> Any:
            problems = choice_problems(self, key[1])
            if problems:
                raise ValueError("; ".join(problems))
            return self

        derived = type(schema.__name__, (schema,), {
            "__module__": schema.__module__,
            "__doc__": schema.__doc__,
            "_llmrec_check_choices": model_validator(mode="after")(_check_choices),
        })
        if len(_DERIVED) > 256:
            _DERIVED.clear()
        _DERIVED[key] = derived
    return derived


# -- the provider ----------------------------------------------------------------------------------------------


@dataclass
class _Calls:
    """What the HTTP calls of one ``complete`` made: counted, usage summed, last raw text kept."""

    attempts: int = 0
    usage: Usage = field(default_factory=Usage)
    last_raw: str | None = None


_CALLS: contextvars.ContextVar[_Calls] = contextvars.ContextVar("llmrec_litellm_calls")


def _raw_text(response: Any) -> str:
    try:
        message = response.choices[0].message
    except (AttributeError, IndexError, TypeError):
        return ""
    tool_calls = getattr(message, "tool_calls", None)
    if tool_calls:
        return str(tool_calls[0].function.arguments or "")
    return str(getattr(message, "content", None) or "")


class LiteLLMProvider:
    """A model reached through litellm (registered as provider ``litellm``)."""

    name = "litellm"

    def __init__(
        self,
        model: str,
        timeout: float | None = None,
        max_retries: int = 2,
        temperature: float | None = None,
        max_tokens: int | None = None,
        api_base: str | None = None,
        api_key: Any = None,
        mode: str = "json",
        backoff: float = 0.5,
        extra: dict[str, Any] | None = None,
        **params: Any,
    ) -> None:
        """Keyword arguments other than these (``extra`` ones included) are passed to ``litellm.acompletion``;
        ``mode`` is instructor's (json, md_json, tools, json_schema), ``backoff`` the first retry's wait."""
        if mode not in MODES:
            raise ProviderError(f"llm mode '{mode}' is not one of {', '.join(MODES)}")
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.api_base = api_base
        if hasattr(api_key, "get_secret_value"):
            api_key = api_key.get_secret_value()
        self.api_key = api_key
        self.backoff = float(backoff)
        self.mode = mode
        self.extra = {**(extra or {}), **params}
        self._client: Any = None
        self._litellm: Any = None
        self._count_model: str | None = None  # the model name count_tokens hands litellm

    def __repr__(self) -> str:
        return f"LiteLLMProvider(model={self.model!r}, api_base={self.api_base!r})"

    # -- setup -------------------------------------------------------------------------------------------------
    def _lib(self) -> Any:
        if self._litellm is None:
            import litellm

            litellm.suppress_debug_info = True
            self._litellm = litellm
        return self._litellm

    def check_model(self) -> None:
        """Raise ProviderError when litellm does not know the provider prefix of ``model``."""
        litellm = self._lib()
        try:
            litellm.get_llm_provider(self.model, api_base=self.api_base)
        except Exception as exc:
            raise ProviderError(
                f"litellm does not know which provider serves model '{self.model}': {_first_line(exc)}. "
                "Prefix the model with its provider, e.g. 'openai/gpt-4o-mini' or 'ollama/llama3' "
                "(https://docs.litellm.ai/docs/providers)"
            ) from None

    def warm(self) -> None:
        """Called when the ``llm`` resource loads: import instructor and build the client now, so that a cold
        process does not spend the first request's timeout on imports and setup."""
        self._instructor()

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes for this model, by ``litellm.token_counter`` (tiktoken, or the model's own
        tokenizer where litellm ships one), for token budgets. Nothing is downloaded: for a model whose tokenizer
        litellm would fetch from the Hugging Face Hub (Llama, Command R, ...) tiktoken counts instead, and when
        counting fails ~4 characters make a token."""
        if not text:
            return 0
        litellm = self._lib()
        if self._count_model is None:
            self._count_model = _TIKTOKEN_MODEL if _downloads_tokenizer(litellm, self.model) else self.model
        try:
            n = int(litellm.token_counter(model=self._count_model, text=text))
        except Exception:  # a tokenizer that cannot load: the rough count
            n = 0
        return n if n > 0 else math.ceil(len(text) / 4)

    def _instructor(self) -> Any:
        if self._client is None:
            import instructor

            # instructor logs every failed attempt at ERROR; we report them ourselves (an llmrec error). A
            # NullHandler keeps Python's last-resort handler from printing them when logging is unconfigured.
            logging.getLogger("instructor").addHandler(logging.NullHandler())

            self._client = instructor.from_litellm(self._acompletion, mode=instructor.Mode[self.mode.upper()])
        return self._client

    # -- calls -------------------------------------------------------------------------------------------------
    async def _acompletion(self, **kwargs: Any) -> Any:
        """One model call as instructor sees it: litellm's, with transient retries, counted in ``_CALLS``."""
        litellm = self._lib()
        calls = _CALLS.get()
        retryable = (litellm.InternalServerError, litellm.ServiceUnavailableError, litellm.APIConnectionError,
                     litellm.RateLimitError, litellm.Timeout)
        for attempt in range(self.max_retries + 1):
            calls.attempts += 1
            try:
                response = await litellm.acompletion(**kwargs, max_retries=0)  # retries are ours: counted
            except asyncio.CancelledError:
                raise
            except retryable as exc:
                if attempt < self.max_retries:
                    await asyncio.sleep(self.backoff * (2**attempt))
                    continue
                raise ProviderError(
                    f"model '{self.model}' failed after {attempt + 1} attempt{'s' if attempt else ''}: "
                    f"{type(exc).__name__}: {_first_line(exc)}"
                ) from None
            except Exception as exc:
                raise _provider_error(exc, self.model, litellm) from None
            self._count(response, calls)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _count(self, response: Any, calls: _Calls) -> None:
        usage = getattr(response, "usage", None)
        cost = 0.0
        try:
            cost = float(self._lib().completion_cost(completion_response=response) or 0.0)
        except Exception:  # a model without a known price costs 0
            cost = 0.0
        calls.usage.add(Usage(
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cost=cost,
        ))
        calls.last_raw = _raw_text(response)

    def _params(self, request: CompletionRequest) -> dict[str, Any]:
        """litellm's keyword arguments. No HTTP timeout: ``asyncio.timeout`` around the whole call rules."""
        params: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "drop_params": True,  # a parameter the provider does not take is dropped, not an error
        }
        temperature = request.temperature if request.temperature is not None else self.temperature
        max_tokens = request.max_tokens if request.max_tokens is not None else self.max_tokens
        for key, value in (("temperature", temperature), ("max_tokens", max_tokens), ("seed", request.seed),
                           ("api_base", self.api_base), ("api_key", self.api_key)):
            if value is not None:
                params[key] = value
        params.update(self.extra)
        params.update(request.extra)
        return params

    async def complete(self, request: CompletionRequest) -> Completion:
        timeout = request.timeout if request.timeout is not None else self.timeout
        calls = _Calls()
        token = _CALLS.set(calls)
        try:
            async with asyncio.timeout(timeout):
                return await self._complete(request, calls)
        except TimeoutError:
            err: LlmrecError = NodeTimeoutError(
                f"model '{self.model}' gave no answer within {timeout:g}s ({calls.attempts} call"
                f"{'s' if calls.attempts != 1 else ''} made)"
            )
            err.usage, err.attempts = calls.usage, calls.attempts  # type: ignore[attr-defined]
            raise err from None
        except LlmrecError as exc:  # the usage of failed calls still counts: the node records it
            exc.usage = calls.usage  # type: ignore[attr-defined]
            if not isinstance(exc, OutputValidationError):
                exc.attempts = calls.attempts  # type: ignore[attr-defined]
            raise
        finally:
            _CALLS.reset(token)

    async def _complete(self, request: CompletionRequest, calls: _Calls) -> Completion:
        params = self._params(request)
        if request.schema is None:
            response = await self._acompletion(**params)
            return self._completion(_raw_text(response), None, calls)
        model = with_choices(request.schema, request.choices)
        try:
            parsed = await self._instructor().create(response_model=model, max_retries=request.max_retries, **params)
        except Exception as exc:
            own = _own_error(exc)
            if own is not None:
                raise own from None
            if isinstance(exc, asyncio.CancelledError):  # pragma: no cover - BaseException, not caught here
                raise
            raise OutputValidationError(
                f"model '{self.model}' gave no valid {request.schema.__name__} after {calls.attempts} attempt"
                f"{'s' if calls.attempts != 1 else ''}: {_validation_detail(exc)}",
                attempts=calls.attempts,
                last_raw=calls.last_raw,
            ) from None
        if type(parsed) is not request.schema and isinstance(parsed, request.schema):
            parsed = request.schema.model_validate(parsed.model_dump())  # back to the plain schema class
        return self._completion(calls.last_raw or "", parsed, calls)

    def _completion(self, text: str, parsed: BaseModel | None, calls: _Calls) -> Completion:
        return Completion(text=text, parsed=parsed, usage=calls.usage, attempts=calls.attempts, model=self.model,
                          provider=self.name)

    async def close(self) -> None:
        self._client = None


#: a model litellm counts with tiktoken (cl100k_base, bundled with litellm: no download)
_TIKTOKEN_MODEL = "gpt-3.5-turbo"


def _downloads_tokenizer(litellm: Any, model: str) -> bool:
    """Whether ``litellm.token_counter`` would fetch a tokenizer from the Hugging Face Hub for ``model`` (it
    also starts a retry thread that outlives the call when offline). litellm's own rule when it has one."""
    import litellm.utils as utils

    kind_of = getattr(utils, "huggingface_tokenizer_kind", None)
    if callable(kind_of):
        try:
            kind = kind_of(model)
        except Exception:
            return True
        bundled = getattr(utils, "_BUNDLED_TOKENIZER_LOAD_LOCKS", None)
        return kind is not None and kind not in (bundled if bundled is not None else ("anthropic", "deepseek"))
    name = model.lower()  # older litellm: the names it picked a Hub tokenizer for
    return any(s in name for s in ("llama-2", "llama-3", "replicate", "command-r", "cohere"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _validation_detail(exc: BaseException) -> str:
    """The last validation error instructor saw, in one line."""
    failed = getattr(exc, "failed_attempts", None) or []
    last = failed[-1].exception if failed else exc
    errors = getattr(last, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            return (f"{where}: " if where else "") + str(first.get("msg", ""))[:300]
        except Exception:  # not a pydantic error after all
            pass
    return _first_line(last)


def _own_error(exc: BaseException) -> LlmrecError | None:
    """An llmrec error raised by our call and wrapped by instructor, if that is what ``exc`` is."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, LlmrecError):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _provider_error(exc: Exception, model: str, litellm: Any) -> ProviderError:
    detail = _first_line(exc)
    if isinstance(exc, litellm.AuthenticationError):
        return ProviderError(f"model '{model}': authentication failed ({detail}). Set api_key in the llm resource, "
                             "e.g. api_key: ${env:OPENAI_API_KEY}")
    if isinstance(exc, litellm.NotFoundError):
        return ProviderError(f"model '{model}' was not found by its provider: {detail}")
    if isinstance(exc, litellm.ContextWindowExceededError):
        return ProviderError(f"model '{model}': the prompt is longer than its context window ({detail}). "
                             "Set token_budget and truncate on the node")
    if isinstance(exc, litellm.BadRequestError) and "provider" in detail.lower() and "not provided" in detail.lower():
        return ProviderError(f"litellm does not know which provider serves model '{model}'. Prefix the model with "
                             "its provider, e.g. 'openai/gpt-4o-mini' (https://docs.litellm.ai/docs/providers)")
    return ProviderError(f"model '{model}': {type(exc).__name__}: {detail}")


def litellm_factory(**config: Any) -> LiteLLMProvider:
    """Registered as provider ``litellm``: ``config`` is the ``llm`` resource's config (provider removed)."""
    provider = LiteLLMProvider(**config)
    provider.check_model()
    return provider


__all__ = ["LiteLLMProvider", "choice_problems", "litellm_factory", "values_at", "with_choices"]
