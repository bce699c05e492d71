"""Resolve output-schema references written in specs.

Forms accepted (relative paths resolve against the spec's folder, then its ``schemas/`` folder):

- ``schemas/recs.py:Recommendation`` -- a Python file beside the spec exporting a pydantic model;
- ``mypackage.schemas:Recommendation`` -- an importable module (installed by the user);
- ``schemas/recs.json`` -- a JSON Schema file.

Importing a schema module executes it, so the trust rule applies (llmrec/trust.py, docs/security.md): a file
beside the spec is imported only when the user trusts the spec's folder, a module only when it belongs to llmrec
or an installed plugin (or the folder is trusted); a file outside the spec's folder is refused. A JSON Schema
file is data, but it too must be inside the folder.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ValidationInfo, WithJsonSchema

from . import trust
from .node import OutputSchemaProblem


def _rel(path: Path) -> str:
    import os

    rel = os.path.relpath(path)
    return rel if not rel.startswith("../../") else str(path)


def _candidates(path: str, base_dir: Path) -> list[Path]:
    p = Path(path)
    if p.is_absolute():
        return [p]
    return [base_dir / p, base_dir / "schemas" / p]


def find_schema_file(part: str, base_dir: Path, confine: bool) -> Path | None:
    """The file ``part`` names (the spec's folder, then its schemas/ folder); with ``confine`` a ValueError when it
    leaves the folder, checked before the file is opened."""
    for candidate in _candidates(part, base_dir):
        if confine:
            candidate = trust.inside(base_dir, str(candidate), "a schema or check file", part)
        if candidate.is_file():
            return candidate
    return None


def import_schema_file(file: Path) -> Any:
    trust.check_code_file(file)
    digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:10]
    modname = f"llmrec_local_schemas.{file.stem}_{digest}"
    mtime = file.stat().st_mtime_ns
    cached = sys.modules.get(modname)
    if cached is not None and getattr(cached, "__llmrec_mtime__", None) == mtime:
        return cached
    spec = importlib.util.spec_from_file_location(modname, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__llmrec_mtime__ = mtime  # type: ignore[attr-defined]
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(modname, None)
        raise OutputSchemaProblem(f"schema module '{file.name}' failed to import: {type(exc).__name__}: {exc}") from None
    return module


def resolve_schema(ref: str, base_dir: Path, field: str = "schema",
                   confine: bool = False) -> type[BaseModel] | dict[str, Any]:
    """A pydantic model class, or a JSON Schema dict; raises OutputSchemaProblem naming what is wrong, and
    trust.UntrustedCode for code this process may not import. ``confine``: ``ref`` is as the spec wrote it, so a
    file must be inside ``base_dir`` (validation); without it ``ref`` is the absolute path validation made."""
    ref = ref.strip()
    if ref.endswith(".json"):
        file = find_schema_file(ref, base_dir, confine)
        if file is not None:
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise OutputSchemaProblem(f"schema file '{ref}' is not valid JSON: {exc}", field) from None
            if not isinstance(data, dict):
                raise OutputSchemaProblem(f"schema file '{ref}' must hold a JSON object", field)
            return data
        raise OutputSchemaProblem(f"schema file '{ref}' not found", field, f"Looked in {_rel(base_dir)} and {_rel(base_dir / 'schemas')}.")
    if ":" not in ref:
        raise OutputSchemaProblem(
            f"schema '{ref}' must be 'file.py:Model', 'package.module:Model' or 'file.json'", field
        )
    module_part, _, attr = ref.rpartition(":")
    if module_part.endswith(".py"):
        file = find_schema_file(module_part, base_dir, confine)
        if file is not None:
            module = import_schema_file(file)
        else:
            raise OutputSchemaProblem(
                f"schema module '{module_part}' not found", field, f"Looked in {_rel(base_dir)} and {_rel(base_dir / 'schemas')}."
            )
    else:
        trust.check_module(module_part, base_dir if confine else None)
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise OutputSchemaProblem(f"schema module '{module_part}' cannot be imported: {exc}", field) from None
    model = getattr(module, attr, None)
    if model is None:
        names = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, BaseModel) and v is not BaseModel)
        hint = f"It defines: {', '.join(names)}." if names else "It defines no pydantic models."
        raise OutputSchemaProblem(f"schema '{attr}' not found in '{module_part}'", field, hint)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise OutputSchemaProblem(f"'{ref}' is not a pydantic model", field)
    return model


def _absolute_ref(value: str, info: ValidationInfo) -> str:
    base = Path((info.context or {}).get("base_dir") or Path.cwd())
    ref = value.strip()
    resolved: Any
    try:
        resolved = resolve_schema(ref, base, confine=True)
    except OutputSchemaProblem as exc:
        raise ValueError(str(exc) + (f". {exc.hint}" if exc.hint else "")) from None
    del resolved
    module_part, sep, attr = ref.rpartition(":") if not ref.endswith(".json") else (ref, "", "")
    if module_part.endswith((".py", ".json")):
        file = find_schema_file(module_part, base, True)
        if file is not None:
            return f"{file.resolve()}{sep}{attr}"
    return ref


#: A config field naming an output schema; validated (and made absolute) when the spec is checked.
SchemaRef = Annotated[
    str,
    AfterValidator(_absolute_ref),
    WithJsonSchema({"type": "string", "description": "'file.py:Model', 'package.module:Model' or 'file.json'"}),
]
