"""A value codec for caches on disk that cannot run code: tagged JSON, never pickle.

A cache file lives where a spec says, so whoever wrote the spec (or the folder) controls its bytes. Decoding must
therefore never execute anything: this codec reads JSON and rebuilds only plain data (None, bools, numbers,
strings, lists, tuples, dicts, sets, bytes), numpy arrays of numeric dtypes (raw bytes, never ``allow_pickle``) and
pydantic models. A model is named by its module and qualified name and rebuilt with ``model_validate`` on the stored
fields, and only when that name resolves, through modules *already imported* (nothing is imported to decode), to a
pydantic model class. Anything else is a :class:`CodecError`, which the cache turns into a miss.

``encode`` refuses values it cannot represent exactly (a class instance that is not a pydantic model, an object
array) with a :class:`CodecError`, which the cache turns into "not cached".
"""

from __future__ import annotations

import base64
import json
import math
import sys
from typing import Any

from pydantic import BaseModel


class CodecError(ValueError):
    """A value that cannot be encoded, or stored data that is not a valid encoding."""


_NUMPY_KINDS = frozenset("biufc")  # bool, int, unsigned, float, complex: raw bytes round-trip exactly
_MAX_DEPTH = 200


def encode(value: Any) -> bytes:
    """``value`` as UTF-8 tagged JSON."""
    return json.dumps(_enc(value, 0), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes) -> Any:
    """The value :func:`encode` wrote; :class:`CodecError` for anything else."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CodecError(f"not a cache entry: {type(exc).__name__}") from None
    return _dec(raw, 0)


def _enc(v: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise CodecError("value nested too deep")
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"$f": repr(v)}
    if isinstance(v, BaseModel):
        cls = type(v)
        if _model_class(cls.__module__, cls.__qualname__) is not cls:
            raise CodecError(f"class {cls.__qualname__} cannot be found again by its name")
        return {"$m": [cls.__module__, cls.__qualname__], "v": _enc(v.model_dump(round_trip=True), depth + 1)}
    if isinstance(v, list):
        return [_enc(x, depth + 1) for x in v]
    if isinstance(v, tuple):
        return {"$t": [_enc(x, depth + 1) for x in v]}
    if isinstance(v, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in v):
            return {k: _enc(x, depth + 1) for k, x in v.items()}
        return {"$d": [[_enc(k, depth + 1), _enc(x, depth + 1)] for k, x in v.items()]}
    if isinstance(v, (set, frozenset)):
        return {"$fs" if isinstance(v, frozenset) else "$s": [_enc(x, depth + 1) for x in v]}
    if isinstance(v, (bytes, bytearray)):
        return {"$b": base64.b64encode(bytes(v)).decode()}
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in _NUMPY_KINDS:
                raise CodecError(f"numpy array of dtype {v.dtype} cannot be cached")
            a = np.ascontiguousarray(v)
            return {"$np": [a.dtype.str, list(a.shape), base64.b64encode(a.tobytes()).decode()]}
        if isinstance(v, np.generic):
            return _enc(v.item(), depth)
    raise CodecError(f"a {type(v).__qualname__} cannot be cached (only data, numpy arrays and pydantic models)")


def _dec(v: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise CodecError("entry nested too deep")
    if isinstance(v, list):
        return [_dec(x, depth + 1) for x in v]
    if not isinstance(v, dict):
        return v
    if len(v) == 1 or (len(v) == 2 and "$m" in v):
        tag = next((k for k in v if k.startswith("$")), None)
        if tag is not None:
            return _tagged(tag, v, depth)
    if any(k.startswith("$") for k in v):
        raise CodecError("unknown tag in a cache entry")
    return {k: _dec(x, depth + 1) for k, x in v.items()}


def _tagged(tag: str, v: dict[str, Any], depth: int) -> Any:
    body = v[tag]
    try:
        if tag == "$f":
            if body not in ("nan", "inf", "-inf"):
                raise CodecError("bad float")
            return float(body)
        if tag == "$t":
            return tuple(_dec(x, depth + 1) for x in body)
        if tag == "$s":
            return {_dec(x, depth + 1) for x in body}
        if tag == "$fs":
            return frozenset(_dec(x, depth + 1) for x in body)
        if tag == "$d":
            return {_dec(k, depth + 1): _dec(x, depth + 1) for k, x in body}
        if tag == "$b":
            return base64.b64decode(body, validate=True)
        if tag == "$np":
            import numpy as np

            dtype, shape, data = body
            dt = np.dtype(str(dtype))
            if dt.kind not in _NUMPY_KINDS or dt.hasobject:
                raise CodecError(f"numpy dtype {dt} is not allowed in a cache entry")
            return np.frombuffer(base64.b64decode(data, validate=True), dtype=dt).reshape([int(n) for n in shape])
        if tag == "$m":
            module, qualname = body
            cls = _model_class(str(module), str(qualname))
            if cls is None:
                raise CodecError(f"{module}.{qualname} is not a pydantic model of a loaded module")
            return cls.model_validate(_dec(v.get("v"), depth + 1))
    except CodecError:
        raise
    except Exception as exc:  # malformed body, a model whose fields no longer validate: a miss
        raise CodecError(f"bad {tag} entry: {type(exc).__name__}") from None
    raise CodecError(f"unknown tag {tag!r} in a cache entry")


def _model_class(module: str, qualname: str) -> type[BaseModel] | None:
    """The pydantic model class ``module.qualname`` among modules already imported; None otherwise."""
    obj: Any = sys.modules.get(module)
    if obj is None:
        return None
    for part in qualname.split("."):
        if part.startswith("__") or part == "<locals>":
            return None
        obj = vars(obj).get(part)  # not getattr: a module's lazy __getattr__ could import code
        if obj is None:
            return None
    return obj if isinstance(obj, type) and issubclass(obj, BaseModel) else None


__all__ = ["CodecError", "decode", "encode"]
