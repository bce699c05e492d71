"""Sandboxed Jinja for prompts, fallback templates and ``when`` conditions.

Templates come from spec authors but render data that is not trusted (request fields, catalog text, LLM
output), so they run in Jinja's immutable sandbox with StrictUndefined: a missing variable is an error, never
an empty string, and templates cannot reach Python internals or mutate their inputs.
"""

from __future__ import annotations

import contextvars
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
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


#: what one render may cost: loop steps over range(), characters of output, seconds, and the size of a value
#: built by '*' or '**' (a spec's template must not stall the event loop under `llmrec serve`)
MAX_STEPS = 1_000_000
MAX_OUTPUT = 2_000_000
MAX_SECONDS = 2.0
MAX_VALUE = 1_000_000


class TemplateLimitError(jinja2.TemplateRuntimeError):
    """A template exceeded a render budget (loop steps, output size, time or value size)."""


class _Budget:
    __slots__ = ("steps", "deadline")

    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > MAX_STEPS:
            raise TemplateLimitError(f"the template loops more than {MAX_STEPS:,} times in one render")
        if self.steps % 4096 == 0 and time.monotonic() > self.deadline:
            raise TemplateLimitError(f"the template took more than {MAX_SECONDS:g} s to render")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("llmrec_template_budget", default=None)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    return budget if budget is not None else _Budget()  # outside render()/an expression: this call's own


class _BoundedRange:
    """``range`` whose iteration counts against the render's budget (nested loops multiply)."""

    def __init__(self, *args: int) -> None:
        self._range = range(*args)

    def __len__(self) -> int:
        return len(self._range)

    def __iter__(self) -> Any:
        budget = _budget()
        for value in self._range:
            budget.step()
            yield value


class BoundedTemplate(jinja2.Template):
    """A template whose render is bounded by a budget (see MAX_*), rendered chunk by chunk."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        token = _BUDGET.set(_Budget())
        try:
            out: list[str] = []
            size = 0
            for chunk in self.generate(*args, **kwargs):
                size += len(chunk)
                if size > MAX_OUTPUT:
                    raise TemplateLimitError(f"the template renders more than {MAX_OUTPUT:,} characters")
                out.append(chunk)
                _BUDGET.get().step(0)  # type: ignore[union-attr]
            return "".join(out)
        finally:
            _BUDGET.reset(token)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with range(), '*' and '**' bounded and every render on a budget."""

    template_class = BoundedTemplate
    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.globals["range"] = _BoundedRange

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(left, (int, float)) and isinstance(right, (int, float)) and abs(right) > 64 and abs(left) > 1:
                raise TemplateLimitError("the template raises a number to a power over 64")
            return left ** right
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_VALUE:
                raise TemplateLimitError(f"the template builds a value longer than {MAX_VALUE:,}")
        return left * right

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _budget().step()
        return super().call(__context, __obj, *args, **kwargs)


def read_source(template: str | None, template_file: str | None, not_found: str = "") -> str:
    """A node's template text: ``template`` itself, else the file ``template_file`` names (already resolved
    against the spec); a missing, unreadable or non-UTF-8 file is a :class:`TemplateProblem` on
    ``template_file`` (``not_found`` adds where else it looked)."""
    if template is not None:
        return template
    assert template_file is not None
    shown = os.path.relpath(template_file)
    try:
        return Path(template_file).read_text(encoding="utf-8")
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        reason = "is a folder" if isinstance(exc, IsADirectoryError) else (
            "cannot be read" if isinstance(exc, PermissionError) else "is not UTF-8 text")
        raise TemplateProblem(f"template file '{shown}' {reason}", field="template_file") from None
    except FileNotFoundError:
        raise TemplateProblem(f"template file '{shown}' not found{not_found}", field="template_file") from None


def make_environment(filters: dict[str, Callable[..., Any]] | None = None) -> ImmutableSandboxedEnvironment:
    """A sandboxed environment with StrictUndefined, render budgets, and the filters plugins registered."""
    env = BoundedSandbox(
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


#: Jinja's parser (and Python's compiler after it) recurses once per nested bracket, 'not' or operator: a template
#: nested far beyond anything readable exhausts the stack, which is the spec's problem, said as such
_TOO_DEEP = ("template nests too deeply (brackets, 'not' or operators inside each other, dozens of levels): "
             "split it, or compute the value in a node")


def variables(source: str, env: jinja2.Environment | None = None) -> set[str]:
    """Top-level names a template reads. Raises TemplateProblem on a syntax error."""
    env = env or _DEFAULT
    try:
        ast = env.parse(source)
        return set(meta.find_undeclared_variables(ast))  # compiles: an unknown filter or test fails here
    except jinja2.TemplateSyntaxError as exc:  # TemplateAssertionError included
        raise TemplateProblem(f"template syntax error: {exc.message}", exc.lineno) from None
    except (RecursionError, MemoryError, SyntaxError):
        raise TemplateProblem(_TOO_DEEP) from None


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
    except (RecursionError, MemoryError, SyntaxError):
        raise TemplateProblem(_TOO_DEEP) from None


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
        expression = env.compile_expression(source, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(f"expression syntax error: {exc.message}", exc.lineno) from None
    except (RecursionError, MemoryError, SyntaxError):
        raise TemplateProblem(_TOO_DEEP.replace("template", "expression", 1)) from None

    def evaluate(*args: Any, **kwargs: Any) -> Any:  # one budget per evaluation, as per render
        token = _BUDGET.set(_Budget())
        try:
            return expression(*args, **kwargs)
        finally:
            _BUDGET.reset(token)

    return evaluate
