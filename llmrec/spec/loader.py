"""load: a spec file (plus its includes) -> a validated :class:`Spec` with positions, or every error found."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from ..errors import Location, SpecError, SpecSyntaxError, SpecValidationError, UntrustedCodeError
from ..trust import hint, is_trusted
from .models import NODE_ID, RESERVED_IDS, InputSpec, NodeSpec, ResourceSpec, Spec
from .yamlpos import Path_, Positions, load_yaml_file

SECTIONS = ("inputs", "resources", "nodes", "outputs")
_ENV = re.compile(r"\$\{env:([^}:]*)(?::-([^}]*))?\}")
MAX_INCLUDE_DEPTH = 8


@dataclass
class SpecDocument:
    """A loaded spec: the merged data, where each value came from, and the model (None when invalid)."""

    path: Path
    display: str
    data: dict[str, Any]
    positions: Positions
    spec: Spec | None = None
    errors: list[SpecError] = field(default_factory=list)
    #: display name of every file read (the spec and its includes) -> the folder relative paths resolve from
    base_dirs: dict[str, Path] = field(default_factory=dict)
    #: every name written in each section, valid or not
    declared: dict[str, set[str]] = field(default_factory=dict)
    #: paths of values that hold an expanded secret: never shown in an error
    secret_paths: set[tuple[Any, ...]] = field(default_factory=set)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def at(self, path: Path_, key: bool = False) -> Location:
        """The location of a value (or of the key holding it) in the merged document."""
        loc = self.positions.key(path) if key else self.positions.value(path)
        return loc or Location(self.display)

    def dir_for(self, path: Path_) -> Path:
        """Folder that relative paths written at ``path`` resolve against (the file that wrote them)."""
        loc = self.positions.value(path)
        if loc is not None and loc.file in self.base_dirs:
            return self.base_dirs[loc.file]
        return self.base_dir


def _display(path: Path, relative_to: Path | None = None) -> str:
    if relative_to is not None:
        try:
            return os.path.relpath(path, relative_to)
        except ValueError:  # pragma: no cover - another drive on Windows
            return str(path)
    return str(path)


def load_spec(path: str | os.PathLike[str], display: str | None = None) -> SpecDocument:
    """Load a spec file: YAML with positions, includes merged, ``${env:VAR}`` expanded, models validated.

    Never raises for a mistake in the spec: problems are returned in ``SpecDocument.errors``.
    """
    p = Path(path)
    display = display or str(path)
    doc = SpecDocument(path=p.resolve(), display=display, data={}, positions=Positions())
    doc.base_dirs[display] = doc.path.parent
    try:
        data, positions = load_yaml_file(p, display)
    except SpecError as exc:
        doc.errors.append(exc)
        return doc
    if not isinstance(data, dict):
        empty = data is None
        doc.errors.append(
            SpecValidationError(
                "the file is empty" if empty else "a spec must be a mapping with 'name', 'inputs', 'nodes' and 'outputs'",
                positions.value(()) or Location(display, 1, 1),
                hint="A spec is a mapping with 'name', 'inputs', 'nodes' and 'outputs'." if empty else None,
            )
        )
        return doc
    doc.data, doc.positions = data, positions
    _merge_includes(doc, data, positions, doc.path, depth=0, seen={doc.path})
    doc.data.setdefault("name", p.stem)
    _expand_env(doc, doc.data, ())
    doc.errors.extend(_check_ids(doc))
    doc.spec = validate_sections(doc)
    return doc


def validate_sections(doc: SpecDocument) -> Spec | None:
    """Validate entry by entry, so one bad node does not hide the problems of the others.

    Entries that fail are reported and left out; the names stay in ``doc.declared`` so that references to
    them are not reported as dangling too.
    """
    raw = dict(doc.data)
    for section, model in (("inputs", InputSpec), ("resources", ResourceSpec), ("nodes", NodeSpec)):
        block = raw.get(section)
        if not isinstance(block, dict):
            continue
        doc.declared[section] = set(block)
        good: dict[str, Any] = {}
        for name, value in block.items():
            if value is None:
                doc.errors.append(SpecValidationError(
                    f"'{section}.{name}' is empty", doc.at((section, name), key=True),
                    name if section == "nodes" else None,
                    "Give it a mapping, e.g. 'type: ...'." if section != "inputs" else "Give it a type, e.g. 'string'.",
                ))
                continue
            try:
                good[name] = model.model_validate(value)
            except ValidationError as exc:
                doc.errors.extend(pydantic_errors(exc, doc, (section, name), model))
                # keep checking the rest of the entry (its type, its references) without the bad keys
                bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
                if isinstance(value, dict) and bad and not bad & {"type"}:
                    try:
                        good[name] = model.model_validate({k: v for k, v in value.items() if k not in bad})
                    except ValidationError:
                        pass
        raw[section] = good
    for _ in range(2):
        try:
            return Spec.model_validate(raw)
        except ValidationError as exc:
            doc.errors.extend(pydantic_errors(exc, doc, (), Spec))
            bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
            if not bad:
                return None
            for key in bad:  # reported; check the rest as if they were absent
                raw.pop(key, None)
            raw.setdefault("name", doc.path.stem)
    return None


def _merge_includes(
    doc: SpecDocument, data: dict[str, Any], positions: Positions, file: Path, depth: int, seen: set[Path]
) -> None:
    includes = data.pop("include", None)
    if includes is None:
        return
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        doc.errors.append(
            SpecValidationError("'include' must be a file path or a list of file paths", positions.value(("include",)))
        )
        return
    for i, rel in enumerate(includes):
        where = positions.value(("include", i)) or positions.value(("include",))
        try:
            target = (file.parent / rel).resolve()
        except (OSError, ValueError, RuntimeError):
            doc.errors.append(SpecValidationError(f"'include' path '{rel[:80]}' is not a valid path", where))
            continue
        root = doc.path.parent
        if not target.is_relative_to(root):  # an include is part of the spec: it lives in the spec's folder
            doc.errors.append(SpecValidationError(
                f"'include' may only name files inside the spec's folder; '{rel[:200]}' is outside it", where,
                hint=f"Copy the file into {_display(root, Path.cwd())} (or a subfolder) and include it from there."))
            continue
        if target in seen:
            doc.errors.append(SpecValidationError(f"'{rel}' is included in a loop", where))
            continue
        if depth >= MAX_INCLUDE_DEPTH:
            doc.errors.append(SpecValidationError(f"includes nest deeper than {MAX_INCLUDE_DEPTH}", where))
            continue
        shown = _display(target, Path.cwd()) if not Path(rel).is_absolute() else rel
        try:
            frag, frag_pos = load_yaml_file(target, shown)
        except SpecSyntaxError as exc:
            if exc.message == "file not found":
                doc.errors.append(
                    SpecValidationError(
                        f"included file '{rel}' not found",
                        where,
                        hint=f"Paths in 'include' resolve relative to the folder of {file.name}.",
                    )
                )
            else:
                doc.errors.append(exc)
            continue
        if frag is None:
            continue
        if not isinstance(frag, dict):
            doc.errors.append(SpecValidationError(f"included file '{rel}' must be a mapping", where))
            continue
        doc.base_dirs[shown] = target.parent
        _merge_includes(doc, frag, frag_pos, target, depth + 1, seen | {target})
        for key, value in frag.items():
            kloc = frag_pos.key((key,))
            if key not in SECTIONS:
                doc.errors.append(
                    SpecValidationError(
                        f"an included file may only hold {', '.join(SECTIONS)}; found '{key}'",
                        kloc,
                    )
                )
                continue
            if not isinstance(value, dict):
                continue  # reported when the merged spec is validated
            target_section = data.setdefault(key, {})
            if not isinstance(target_section, dict):
                continue
            if key not in positions.values:
                positions.values[(key,)] = frag_pos.value((key,)) or Location(shown)
                positions.keys[(key,)] = kloc or Location(shown)
            for name, item in value.items():
                if name in target_section:
                    first = positions.key((key, name))
                    doc.errors.append(
                        SpecValidationError(
                            f"'{key}.{name}' is defined twice (also at {first})",
                            frag_pos.key((key, name)),
                            hint="Rename one of them.",
                        )
                    )
                    continue
                target_section[name] = item
                sub = Positions()
                sub.values = {k[2:]: v for k, v in frag_pos.values.items() if k[:2] == (key, name)}
                sub.keys = {k[2:]: v for k, v in frag_pos.keys.items() if k[:2] == (key, name) and len(k) > 2}
                sub.plain = {k[2:] for k in frag_pos.plain if k[:2] == (key, name)}
                positions.update(sub, (key, name))
                positions.keys[(key, name)] = frag_pos.key((key, name)) or Location(shown)


#: a variable whose name says it holds a secret
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|PRIVATE|SESSION|COOKIE)", re.I)
#: config keys that are secret slots: the only places a secret may be expanded into
_SECRET_SLOT = re.compile(r"(^|_)(api_key|key|token|password|secret)$", re.I)
#: the user's own allow-list (never the spec's): variables that may expand anywhere, comma-separated
ENV_ALLOW = "LLMREC_ENV_ALLOW"


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret (unless the user allowed it by name)."""
    allowed = {v.strip() for v in os.environ.get(ENV_ALLOW, "").split(",") if v.strip()}
    return name not in allowed and bool(_SECRET_NAME.search(name))


def _expand_env(doc: SpecDocument, value: Any, path: Path_) -> Any:
    """Replace ``${env:VAR}`` / ``${env:VAR:-default}`` in every string, in place.

    A variable whose name says it is a secret (``*_KEY``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``, ...) expands
    only into a secret slot, a config key such as ``api_key``, ``token`` or ``password`` holding nothing but the
    reference; anywhere else (a template, an output, an ``api_base``, a literal) it is an error, so a spec cannot
    copy a secret into text it controls. ``$LLMREC_ENV_ALLOW`` (the user's environment, never the spec) names
    variables that may expand anywhere. Paths holding an expanded secret are recorded so errors never show them."""
    if isinstance(value, dict):
        written = {k: v for k, v in value.items() if isinstance(k, str) and _ENDPOINT.search(k)}
        for k, v in value.items():
            value[k] = _expand_env(doc, v, path + (k,))
        secrets = [path + (k,) for k in value if path + (k,) in doc.secret_paths]
        _check_endpoint(doc, path, written, secrets)
        return value
    if isinstance(value, list):
        for i, v in enumerate(value):
            value[i] = _expand_env(doc, v, path + (i,))
        return value
    if not isinstance(value, str) or "${env:" not in value:
        return value

    slot = bool(path) and isinstance(path[-1], str) and bool(_SECRET_SLOT.search(path[-1])) and \
        _ENV.fullmatch(value.strip()) is not None

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            doc.errors.append(
                SpecValidationError(f"invalid environment variable name '{name}'", offset_location(doc, path, m.start()))
            )
            return ""
        if is_secret_name(name):
            if not slot:
                field_name = ".".join(str(p) for p in path)
                doc.errors.append(SpecValidationError(
                    f"'{field_name}' reads environment variable '{name}', whose name says it is a secret; a secret "
                    "may only fill a secret field (api_key, token, password), written as nothing but the reference",
                    offset_location(doc, path, m.start()),
                    node_id=path[1] if len(path) > 1 and path[0] == "nodes" else None,
                    hint=f"Put it in the llm resource's api_key: \"${{env:{name}}}\". If it is not a secret, allow "
                         f"it in your own environment: {ENV_ALLOW}={name}."))
                return ""
            doc.secret_paths.add(path)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        doc.errors.append(
            SpecValidationError(
                f"environment variable '{name}' is not set",
                offset_location(doc, path, m.start()),
                node_id=path[1] if len(path) > 1 and path[0] == "nodes" else None,
                hint=f"Export it, or give a default: '${{env:{name}:-value}}'.",
            )
        )
        return ""

    return _ENV.sub(sub, value)


#: config keys naming the server a provider sends requests (and its api key) to
_ENDPOINT = re.compile(r"(^|_)(api_base|base_url|api_url|endpoint|url|host)$", re.I)


def _check_endpoint(doc: SpecDocument, path: Path_, written: dict[str, Any], secrets: list[Path_]) -> None:
    """A secret from the user's environment and a server the spec wrote, side by side, would send the secret to a
    server the spec chose (``api_key: ${env:OPENAI_API_KEY}`` with ``api_base: https://attacker``): refused
    unless the server also comes from the environment, or the user trusts the spec's folder."""
    if not secrets:
        return
    for key, raw in written.items():
        if raw is None or (isinstance(raw, str) and _ENV.fullmatch(raw.strip()) is not None):
            continue  # the user's environment names the server

        if is_trusted(doc.base_dir):
            return
        secret = ".".join(str(p) for p in secrets[0])
        doc.errors.append(SpecValidationError(
            f"'{key}' sends the secret in '{secret}' (from your environment) to a server this spec names; a spec "
            "you did not write could send your key anywhere",
            doc.at(path + (key,)),
            node_id=path[1] if len(path) > 1 and path[0] == "nodes" else None,
            hint=f"Set the server from your environment too ({key}: \"${{env:MY_API_BASE}}\"). If you wrote this "
                 "spec: " + hint(doc.base_dir)))


def offset_location(doc: SpecDocument, path: Path_, offset: int) -> Location:
    """Point at character ``offset`` of the string at ``path`` when it sits on one line in plain style."""
    loc = doc.at(path)
    if tuple(path) in doc.positions.plain and loc.line:
        return Location(loc.file, loc.line, loc.col + offset)
    return loc


def _check_ids(doc: SpecDocument) -> list[SpecError]:
    errors: list[SpecError] = []
    for section in ("nodes", "resources", "inputs"):
        block = doc.data.get(section)
        if not isinstance(block, dict):
            continue
        for name in block:
            where = doc.at((section, name), key=True)
            what = {"nodes": "node id", "resources": "resource name", "inputs": "input name"}[section]
            if not NODE_ID.match(name):
                errors.append(
                    SpecValidationError(
                        f"invalid {what} '{name}'",
                        where,
                        hint="Use letters, digits and underscores, starting with a letter or underscore.",
                    )
                )
            elif section == "nodes" and name in RESERVED_IDS:
                errors.append(
                    SpecValidationError(
                        f"'{name}' is reserved and cannot be a node id",
                        where,
                        hint=f"Reserved names: {', '.join(sorted(RESERVED_IDS))}.",
                    )
                )
    return errors


def suggest(word: str, choices: Any, n: int = 1) -> list[str]:
    """Close matches for a misspelt name (difflib ratio >= 0.6)."""
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)


def _model_at(model: Any, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that validates the value at ``loc`` under ``model``, if one does."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            f = current.model_fields.get(str(part))
            if f is None:
                return None
            current = f.annotation
            continue
        origin = get_origin(current)
        if origin is dict:
            current = get_args(current)[1]
        elif origin is list:
            current = get_args(current)[0]
        else:
            args = [a for a in get_args(current) if isinstance(a, type) and issubclass(a, BaseModel)]
            if not args:
                return None
            current = args[0]
            if isinstance(part, str) and part == current.__name__:
                continue
            f = current.model_fields.get(str(part))
            if f is None:
                return None
            current = f.annotation
    while get_origin(current) is not None and not (isinstance(current, type)):
        args = [a for a in get_args(current) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not args:
            return None
        current = args[0]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pydantic_errors(
    exc: ValidationError,
    doc: SpecDocument,
    prefix: Path_,
    model: type[BaseModel],
    node_id: str | None = None,
    what: str | None = None,
) -> list[SpecError]:
    """Turn a pydantic ValidationError into SpecErrors that point at the offending key or value.

    ``prefix`` is where the validated mapping sits in the document; ``what`` names it in messages
    (e.g. "config of node type 'retrieve.popular'").
    """
    errors: list[SpecError] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        full = prefix + loc
        nid = node_id
        if nid is None and len(full) >= 2 and full[0] == "nodes" and isinstance(full[1], str):
            nid = full[1]
            rel = full[2:]
        else:
            rel = loc if node_id is not None else full
        dotted = ".".join(str(p) for p in rel)
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            parent = _model_at(model, loc[:-1])
            allowed = sorted(parent.model_fields) if parent else []
            close = suggest(key, allowed)
            if close:
                hint = f"Did you mean '{close[0]}'?"
            elif allowed:
                hint = f"Allowed keys: {', '.join(allowed)}."
            else:
                hint = None
            where = f" in {what}" if what else ""
            errors.append(SpecValidationError(f"unknown key '{key}'{where}", doc.at(full, key=True), nid, hint))
        elif kind == "missing":
            key = str(loc[-1]) if loc else "?"
            where = f" in {what}" if what else ""
            errors.append(SpecValidationError(f"missing required key '{key}'{where}", doc.at(full[:-1], key=True), nid))
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            msg = re.sub(r" or instance of \w+$", "", msg)
            value = err.get("input")
            named = isinstance(value, str) and ":" in value and os.path.basename(value.split(":")[0]) in msg
            secret = any(full[:len(sp)] == sp or sp[:len(full)] == full for sp in doc.secret_paths)
            if secret:  # an expanded secret is never echoed
                msg = msg.replace(str(value), "****") if isinstance(value, str) and value else msg
            elif "input" in err and not isinstance(value, (dict, list)) and "got " not in msg and not named:
                msg += f" (got {_short(err['input'])})"
            label = f"'{dotted}'" if dotted else (what or "value")
            if what and dotted:
                label = f"'{dotted}' in {what}"
            cause = (err.get("ctx") or {}).get("error")
            if type(cause).__name__ == "UntrustedCode":  # llmrec.trust: code the spec names, not imported
                errors.append(UntrustedCodeError(f"'{dotted}': {msg}", doc.at(full), nid, getattr(cause, "hint", None)))
                continue
            errors.append(SpecValidationError(f"invalid {label}: {msg}", doc.at(full), nid))
    return errors
