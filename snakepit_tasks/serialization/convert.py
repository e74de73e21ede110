"""What JSON has no type for: made JSON in results, refused (with its place) in arguments.

A result value is converted by the first of: bytes -> bytes tag; float subclass -> float;
tuple (namedtuple too) -> list; enum member -> its value; UUID -> str; ``model_dump()``,
``to_dict()``, ``_asdict()``; a dataclass -> a dict of its fields; ``tolist()`` when the
value has at most ``SNAKEPIT_TOLIST_MAX_ELEMENTS`` elements (default 1,000,000; counted from
``shape``, else ``size``, else ``len()``; unknown: converted); ``isoformat()``; set and
frozenset -> list; else a marker (:mod:`.markers`). A conversion that raises is skipped.
Arguments take only bytes, float subclasses, tuples, enum members and UUIDs this way.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import operator
import os
import uuid
from typing import Any

from .codec import tag_bytes
from .markers import marker, type_name

TOLIST_MAX_ELEMENTS = 1_000_000
TOLIST_ENV = "SNAKEPIT_TOLIST_MAX_ELEMENTS"

_BYTES_LIKE = (bytes, bytearray, memoryview)
_SCALARS = (str, int, bytes, bytearray, memoryview, uuid.UUID)
_NONE: Any = object()  # "no conversion" (None is a conversion's legitimate result)


def result_default(value: Any) -> Any:
    """A JSON-encodable stand-in for ``value`` (never raises)."""
    converted = _common(value)
    if converted is not _NONE:
        return converted
    for name in ("model_dump", "to_dict", "_asdict"):
        done, converted = _call(value, name)
        if done:
            return converted
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    if _fits(value):
        done, converted = _call(value, "tolist")
        if done:
            return converted
    done, converted = _call(value, "isoformat")
    if done:
        return converted
    if isinstance(value, (set, frozenset)):
        return list(value)
    return marker(value)


def argument_default(value: Any) -> Any:
    """The JSON form of the few non-JSON types an argument may be; TypeError for the rest."""
    converted = _common(value)
    if converted is _NONE:
        raise TypeError(f"Object of type {type_name(value)} is not JSON serializable")
    return converted


def find_problem(value: Any, path: str = "args") -> tuple[str, str, str] | None:
    """Where an argument is not encodable: ``(path, type name, what is wrong)``, or None."""
    try:
        return _find(value, path, set())
    except RecursionError:
        return None


def _common(value: Any) -> Any:
    """Conversions arguments and results share (orjson and json see them alike); or _NONE."""
    if isinstance(value, _BYTES_LIKE):
        return tag_bytes(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    return _NONE


def _call(value: Any, name: str) -> tuple[bool, Any]:
    try:
        method = getattr(value, name, None)
        if callable(method):
            return True, method()
    except Exception:
        pass
    return False, None


def _fits(value: Any) -> bool:
    """Whether ``value.tolist()`` would make at most the allowed number of elements."""
    try:
        shape = getattr(value, "shape", None)
        if isinstance(shape, tuple):
            count = math.prod(operator.index(n) for n in shape)
        else:
            size = getattr(value, "size", None)
            count = size if isinstance(size, int) else len(value)
    except Exception:
        return True  # nothing tells the size: best effort
    return count <= _tolist_limit(os.environ.get(TOLIST_ENV, ""))


@functools.lru_cache(maxsize=8)
def _tolist_limit(raw: str) -> int:
    try:
        return max(0, int(raw.strip()))
    except ValueError:
        return TOLIST_MAX_ELEMENTS


def _find(value: Any, path: str, ancestors: set[int]) -> tuple[str, str, str] | None:
    if value is None or isinstance(value, _SCALARS):
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return path, type_name(value), f"{value!r} (NaN and infinity are not JSON)"
    if isinstance(value, enum.Enum):
        return _find(value.value, path, ancestors)
    if not isinstance(value, (list, tuple, dict)):
        return path, type_name(value), f"a {type_name(value)}"
    if id(value) in ancestors:
        return path, type_name(value), "a circular reference"
    ancestors.add(id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}[{key!r}]"
            if not (key is None or isinstance(key, (str, int, float))):
                return where, type_name(key), f"a dict key of type {type_name(key)}"
            if isinstance(key, float) and not math.isfinite(key):
                return where, type_name(key), f"a dict key {key!r} (NaN and infinity are not JSON)"
            found = _find(item, where, ancestors)
            if found:
                return found
    else:
        for index, item in enumerate(value):
            found = _find(item, f"{path}[{index}]", ancestors)
            if found:
                return found
    ancestors.discard(id(value))
    return None
