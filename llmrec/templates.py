"""Sandboxed Jinja for prompts, fallback templates and ``when`` conditions.

Templates come from spec authors but render data that is not trusted (request fields, catalog text, LLM
output), so they run in Jinja's immutable sandbox with StrictUndefined: a missing variable is an error, never
an empty string, and templates cannot reach Python internals or mutate their inputs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateProblem(ValueError):
    """A template that does not compile or that needs variables nothing provides."""

    def __init__(self, message: str, lineno: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.lineno = lineno
        self.field = field  # the config key holding the template, when a node type knows it


def make_environment(filters: dict[str, Callable[..., Any]] | None = None) -> ImmutableSandboxedEnvironment:
    """A sandboxed environment with StrictUndefined and the filters plugins registered."""
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    if filters:
        env.filters.update(filters)
    return env


_DEFAULT = make_environment()


def variables(source: str, env: jinja2.Environment | None = None) -> set[str]:
    """Top-level names a template reads. Raises TemplateProblem on a syntax error."""
    env = env or _DEFAULT
    try:
        ast = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}", exc.lineno) from None
    return set(meta.find_undeclared_variables(ast))


def check(source: str, available: Iterable[str], env: jinja2.Environment | None = None) -> list[str]:
    """Names the template reads that ``available`` does not provide (sorted). Raises TemplateProblem."""
    env = env or _DEFAULT
    names = variables(source, env)
    missing = names - set(available) - set(env.globals)
    return sorted(missing)


def check_expression(source: str, available: Iterable[str], env: jinja2.Environment | None = None) -> list[str]:
    """Like :func:`check` for a bare expression such as ``inputs.k > 5``."""
    return check("{{ " + source + " }}", available, env)


def compile_template(source: str, env: jinja2.Environment | None = None) -> jinja2.Template:
    env = env or _DEFAULT
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}", exc.lineno) from None


_SIMPLE = re.compile(r"^\s*(not\s+)?([A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*)\s*$")


def _fast_condition(source: str) -> Callable[..., Any] | None:
    """``inputs.query`` / ``not node.field``: the common conditions, evaluated without rendering a template
    (Jinja's compiled expressions cost ~10 us a call). Same semantics as the sandbox for these forms: mapping
    keys or public attributes, and an error when a name is missing."""
    m = _SIMPLE.match(source)
    if m is None:
        return None
    negate = bool(m.group(1))
    head, *rest = m.group(2).split(".")

    def evaluate(**scope: Any) -> Any:
        try:
            value = scope[head]
            for name in rest:
                if isinstance(value, dict):
                    value = value[name]
                else:
                    value = getattr(value, name)
        except (KeyError, AttributeError):
            raise jinja2.UndefinedError(f"'{m.group(2)}' is undefined") from None
        return not value if negate else value

    return evaluate


def compile_expression(source: str, env: jinja2.Environment | None = None) -> Callable[..., Any]:
    fast = _fast_condition(source)
    if fast is not None:
        return fast
    env = env or _DEFAULT
    try:
        return env.compile_expression(source, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(f"expression syntax error: {exc.message}", exc.lineno) from None
