"""The JSON codec: orjson when it is installed, the standard library otherwise; same results.

orjson is tried first and the standard library decides whenever orjson refuses or could
differ: integers past 64 bits, non-string dict keys, lone surrogates, deep nesting, and (for
strict arguments) anything that wrote ``null``, since orjson writes NaN as ``null``. Either
way the output is compact JSON; NaN and infinity are ``null`` unless ``strict`` forbids them.

Bytes travel as ``{"__snakepit_bytes__": "<base64>"}`` and are decoded back to ``bytes``: a
dict with that single key, a string value and valid base64 is read as bytes, so the key is
reserved. Anything else with that key stays a dict.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - a dependency; tests cover the stdlib path directly
    orjson = None  # type: ignore[assignment]

BYTES_TAG = "__snakepit_bytes__"

Default = Callable[[Any], Any]

_SEPARATORS = (",", ":")
_TAG_KEY = b'"' + BYTES_TAG.encode() + b'"'
# orjson reads an integer past the 64-bit range as a float, so a payload that may hold one
# (a run of 19 digits not after a ".") is read by the standard library instead.
_DIGITS = bytes(0x30 if 0x30 <= i <= 0x39 else 0x2E if i == 0x2E else 0x20 for i in range(256))
_LONG_INT = b"0" * 19
_DOT = ord(".")
# datetime and dataclasses go through ``default``, as they do with the standard library.
_ORJSON_OPTIONS = (
    0 if orjson is None else orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)


def backend() -> str:
    """``"orjson"`` or ``"json"``: the codec tried first."""
    return "json" if orjson is None else "orjson"


def tag_bytes(value: bytes | bytearray | memoryview) -> dict[str, str]:
    """The JSON form of bytes: ``{"__snakepit_bytes__": "<base64>"}``."""
    return {BYTES_TAG: base64.b64encode(value).decode("ascii")}


def dumps(value: Any, default: Default, *, strict: bool) -> bytes:
    """Compact JSON of ``value``; ``default`` turns what JSON has no type for into JSON values.

    ``strict`` makes NaN and infinity a ValueError; otherwise they are written as ``null``.
    Raises TypeError, ValueError or RecursionError as :func:`json.dumps` does.
    """
    if orjson is not None:
        try:
            data = orjson.dumps(value, default=default, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError:
            pass  # the standard library either manages (big ints, int keys) or says why not
        else:
            if not (strict and b"null" in data):
                return data
    return _stdlib_dumps(value, default, strict)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """The value of a JSON payload, bytes tags decoded. Raises ValueError or RecursionError."""
    if isinstance(data, str):
        value = json.loads(data)
        return _untag(value) if _TAG_KEY.decode() in data else value
    if not isinstance(data, bytes):
        data = bytes(data)
    if orjson is not None and not _may_hold_long_int(data):
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:  # NaN tokens, UTF-16, depth: the stdlib reads or says why
            value = json.loads(data)
    else:
        value = json.loads(data)
    return _untag(value) if _TAG_KEY in data else value


def _may_hold_long_int(data: bytes) -> bool:
    """Whether ``data`` may hold an integer of 19 digits or more (false positives are fine)."""
    # Every run of 19 digits holds two bytes nine apart: sampling first is several times cheaper.
    if b"00" not in data[::9].translate(_DIGITS):
        return False
    classes = data.translate(_DIGITS)  # digits are "0", "." stays, the rest is " "
    start = classes.find(_LONG_INT)
    for _ in range(32 + len(data) // 256):  # bounded: a float-heavy payload costs ~2 ns a byte
        if start <= 0 or classes[start - 1] != _DOT:
            return start >= 0
        window = classes[start : start + 64]
        run = len(window) - len(window.lstrip(b"0"))
        if run == 64:
            return True
        start = classes.find(_LONG_INT, start + run)  # past the digits of a float's fraction
    return True


def _stdlib_dumps(value: Any, default: Default, strict: bool) -> bytes:
    try:
        return json.dumps(value, separators=_SEPARATORS, allow_nan=False, default=default).encode()
    except ValueError as exc:
        if strict or "Out of range float" not in str(exc):
            raise

    def finite_default(item: Any) -> Any:
        return _nan_to_null(default(item), set())

    finite = _nan_to_null(value, set())
    return json.dumps(
        finite, separators=_SEPARATORS, allow_nan=False, default=finite_default
    ).encode()


def _nan_to_null(value: Any, ancestors: set[int]) -> Any:
    """A copy of the lists and dicts in ``value`` with NaN and infinity replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple, dict)):
        if id(value) in ancestors:
            raise ValueError("Circular reference detected")
        ancestors.add(id(value))
        if isinstance(value, dict):
            copy: Any = {key: _nan_to_null(item, ancestors) for key, item in value.items()}
        else:
            copy = [_nan_to_null(item, ancestors) for item in value]
        ancestors.discard(id(value))
        return copy
    return value


def _as_bytes(value: Any) -> bytes | None:
    """The bytes a tag dict stands for, or None when ``value`` is not a tag."""
    if not isinstance(value, dict) or len(value) != 1:
        return None
    text = value.get(BYTES_TAG)
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _untag(value: Any) -> Any:
    """``value`` with every bytes tag in it replaced by the bytes (lists and dicts in place)."""
    found = _as_bytes(value)
    if found is not None:
        return found
    stack = [value] if isinstance(value, (dict, list)) else []
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, item in items:
            if isinstance(item, dict):
                found = _as_bytes(item)
                if found is None:
                    stack.append(item)
                else:
                    node[key] = found
            elif isinstance(item, list):
                stack.append(item)
    return value
