"""Provider routing: several providers behind one, tried in order.

An ``llm`` resource with ``fallbacks`` becomes a :class:`RoutedProvider`: the first route is the resource's own
provider and model, the others follow in the order written (cheap first, strong last). A route may accept only
prompts up to ``max_input_chars`` (a small-context model takes short prompts, a long-context one the rest), and
each has its own ``timeout``, cut to what the request's deadline leaves. A route that fails (a provider error, a
timeout, output that stays invalid after its re-asks) hands the request to the next; usage and cost of every
attempt are summed, and the completion says which route answered (``Completion.provider`` and ``model``).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, replace

from ..errors import NodeTimeoutError, OutputValidationError, ProviderError
from .provider import Completion, CompletionRequest, Provider, Usage


@dataclass(frozen=True)
class Route:
    provider: Provider
    timeout: float | None = None
    max_input_chars: int | None = None

    @property
    def label(self) -> str:
        return f"{self.provider.name}:{self.provider.model}"


class RoutedProvider:
    """Try each eligible route in order until one answers."""

    name = "routed"

    def __init__(self, routes: list[Route]) -> None:
        if not routes:
            raise ValueError("a routed provider needs at least one route")
        self.routes = routes
        self.model = routes[0].provider.model
        self.timeout = routes[0].timeout
        self.max_retries = getattr(routes[0].provider, "max_retries", 0)

    def warm(self) -> None:
        for route in self.routes:
            warm = getattr(route.provider, "warm", None)
            if callable(warm):
                warm()

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes by the first route's tokenizer (its ``count_tokens``), else ~4 characters a
        token: prompts are sized for the model tried first."""
        count = getattr(self.routes[0].provider, "count_tokens", None)
        if callable(count):
            return int(count(text))
        return math.ceil(len(text) / 4)

    def eligible(self, request: CompletionRequest) -> list[Route]:
        size = sum(len(m.content) for m in request.messages)
        return [r for r in self.routes if r.max_input_chars is None or size <= r.max_input_chars]

    async def complete(self, request: CompletionRequest) -> Completion:
        routes = self.eligible(request)
        if not routes:
            size = sum(len(m.content) for m in request.messages)
            raise ProviderError(f"no route takes a prompt of {size} characters "
                                f"(limits: {', '.join(f'{r.label} {r.max_input_chars}' for r in self.routes)})")
        deadline = None if request.timeout is None else time.monotonic() + request.timeout
        usage = Usage()
        attempts = 0
        failures: list[str] = []
        for route in routes:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                failures.append(f"{route.label}: no time left")
                break
            timeout = min((t for t in (route.timeout, left) if t is not None), default=None)
            try:
                if timeout is None:
                    done = await route.provider.complete(replace(request, timeout=None))
                else:
                    async with asyncio.timeout(timeout):
                        done = await route.provider.complete(replace(request, timeout=timeout))
            except (ProviderError, OutputValidationError, NodeTimeoutError, TimeoutError) as exc:
                spent = getattr(exc, "usage", None)
                if isinstance(spent, Usage):
                    usage.add(spent)
                attempts += int(getattr(exc, "attempts", 0) or 1)
                what = "timed out" if isinstance(exc, (TimeoutError, NodeTimeoutError)) else str(exc)
                failures.append(f"{route.label}: {what}")
                continue
            usage.add(done.usage)
            done.usage = usage
            done.attempts += attempts
            return done
        error = ProviderError("every route failed: " + "; ".join(failures))
        error.usage = usage  # type: ignore[attr-defined]
        error.attempts = attempts  # type: ignore[attr-defined]
        raise error

    async def close(self) -> None:
        for route in self.routes:
            closer = getattr(route.provider, "close", None)
            if closer is not None:
                await closer()


__all__ = ["Route", "RoutedProvider"]
