"""The exception hierarchy, grouped by who is at fault.

::

    LlmrecError
    ├── SpecError(message, location, node_id, hint)   the spec author's mistake
    │   ├── SpecSyntaxError          YAML that does not parse, forbidden tags, alias bombs
    │   ├── SpecValidationError      unknown keys, wrong types, bad values
    │   ├── UnknownNodeTypeError     with did-you-mean suggestions
    │   ├── DanglingReferenceError   ${...} that names nothing
    │   ├── GraphCycleError          lists the loop
    │   ├── TypeMismatchError        producer's output vs consumer's declared input
    │   ├── TemplateError            Jinja syntax or variables nothing provides
    │   └── OutputSchemaError        schema references that do not resolve
    ├── SpecErrors(errors)           all of them together, from validate()
    ├── PluginError(plugin, distribution)   bad or duplicate registration
    ├── InputError(field)            a request's inputs do not match the spec's `inputs`
    ├── DataError(path, row, column) bad data in a catalog, log or dataset file; or data that is missing
    └── RunError(node_id, run_id)    something failed while running a valid spec
        ├── NodeTimeoutError
        ├── ProviderError
        ├── OutputValidationError(attempts, last_raw)
        └── FallbackExhaustedError

The core never prints: the CLI and the server turn these into text, exit codes and HTTP responses.
"""

from __future__ import annotations

import os

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, order=True)
class Location:
    """A position in a spec file; line and col are 1-based."""

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if not self.line:
            return self.file
        return f"{self.file}:{self.line}:{self.col}"


class LlmrecError(Exception):
    """Base class of every error llmrec raises on purpose."""


class SpecError(LlmrecError):
    """A mistake in a spec, with where it is and what to do about it."""

    severity = "error"

    def __init__(
        self,
        message: str,
        location: Location | None = None,
        node_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.location = location
        self.node_id = node_id
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        """Render as ``path:line:col: node 'id': message hint`` on one line."""
        parts = []
        if self.location is not None:
            parts.append(f"{self.location}:")
        if self.node_id is not None:
            parts.append(f"node '{self.node_id}':")
        if self.severity != "error":
            parts.append(f"{self.severity}:")
        text = self.message
        if self.hint:
            text += ("" if text.endswith((".", "?", "!", ":")) else ".") + " " + self.hint
        parts.append(text)
        return " ".join(parts)

    def sort_key(self) -> tuple[Any, ...]:
        loc = self.location or Location("")
        return (loc.file, loc.line, loc.col, self.message)


class SpecWarning(SpecError):
    """Something that does not stop a spec from validating, but will matter when it runs."""

    severity = "warning"


class SpecSyntaxError(SpecError):
    pass


class SpecValidationError(SpecError):
    pass


class UnknownNodeTypeError(SpecError):
    pass


class DanglingReferenceError(SpecError):
    pass


class GraphCycleError(SpecError):
    pass


class TypeMismatchError(SpecError):
    pass


class TemplateError(SpecError):
    pass


class OutputSchemaError(SpecError):
    pass


class UntrustedCodeError(SpecError):
    """The spec names code (a plugin, schema or check file, a module) that was not imported: its folder is not
    trusted (llmrec/trust.py)."""


class SpecErrors(LlmrecError):
    """Every problem found in one or more specs, sorted by position."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = sorted(errors, key=SpecError.sort_key)
        n = len(self.errors)
        head = f"{n} error{'s' if n != 1 else ''} in spec"
        super().__init__(head + ":\n" + "\n".join(e.format() for e in self.errors))


class PluginError(LlmrecError):
    """A plugin registered something invalid or something another plugin already registered."""

    def __init__(self, message: str, plugin: str | None = None, distribution: str | None = None) -> None:
        self.plugin = plugin
        self.distribution = distribution
        who = f"plugin '{plugin}'" if plugin else "plugin"
        if distribution:
            who += f" ({distribution})"
        super().__init__(f"{who}: {message}")


class InputError(LlmrecError):
    """A request's inputs do not match the spec's declared `inputs`; `field` names the culprit."""

    def __init__(self, message: str, field: str | None = None, errors: list[dict[str, Any]] | None = None) -> None:
        self.field = field
        self.errors = errors or [{"field": field, "message": message}]
        super().__init__(message)


class DataError(LlmrecError):
    """Bad or missing data: names the file, the row (1-based, counting the header line as row 1 for CSV) and
    the column, and says what to do. Raised by loaders before anything is written, so nothing is half-built."""

    def __init__(
        self,
        message: str,
        path: str | os.PathLike[str] | None = None,
        row: int | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.row = row
        self.column = column
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        where = self.path or ""
        if self.row is not None:
            where += f":{self.row}" if where else f"row {self.row}"
        text = f"{where}: " if where else ""
        if self.column is not None:
            text += f"column '{self.column}': "
        text += self.message
        if self.hint:
            text += f". {self.hint}" if not self.message.endswith(".") else f" {self.hint}"
        return text


class RunError(LlmrecError):
    """A node failed while a valid spec ran."""

    def __init__(self, message: str, node_id: str | None = None, run_id: str | None = None) -> None:
        self.node_id = node_id
        self.run_id = run_id
        self.trace: Any = None  # filled by the executor so callers can show what ran
        prefix = f"node '{node_id}': " if node_id else ""
        super().__init__(prefix + message)

    def at(self, node_id: str, run_id: str | None = None) -> RunError:
        """This error, naming the node (and run) it came from where it did not yet; the executor calls it when a
        node raises a RunError of its own, so a plugin's ``ProviderError("503")`` still says which node."""
        if self.node_id is None:
            self.node_id = node_id
            self.args = (f"node '{node_id}': {self.args[0]}" if self.args else f"node '{node_id}'", *self.args[1:])
        if self.run_id is None:
            self.run_id = run_id
        return self


class NodeTimeoutError(RunError):
    pass


class DeadlineExceededError(RunError):
    """The whole request ran past its deadline (``--deadline`` or the spec's ``budget.latency``)."""


class ProviderError(RunError):
    pass


class OutputValidationError(RunError):
    def __init__(self, message: str, node_id: str | None = None, attempts: int = 0, last_raw: str | None = None):
        super().__init__(message, node_id)
        self.attempts = attempts
        self.last_raw = last_raw


class FallbackExhaustedError(RunError):
    pass
