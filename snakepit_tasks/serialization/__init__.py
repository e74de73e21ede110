"""Payloads between caller, node and adapter: strict arguments, forgiving results, JSON.

Arguments (:func:`encode_args`, :func:`check_args`) must be JSON: dicts, lists, tuples,
strings, numbers (not NaN or infinity), booleans, None, plus bytes, enum members (their
value) and UUIDs (their string); anything else is a :class:`SerializationError` that names
where it is. Results and stream chunks (:func:`encode_result`) never fail on a value: what
JSON cannot hold is converted or becomes a marker (see :mod:`.convert`, :mod:`.markers`);
NaN and infinity become ``null``. Only a circular reference, a dict key that is not a str,
int, float, bool or None, or nesting deeper than about 1,000 levels fail a result.

Bytes, bytearray and memoryview travel as ``{"__snakepit_bytes__": "<base64>"}`` (a reserved
key) and :func:`decode` gives them back as ``bytes``. orjson is used when installed, with
the same results as the standard library (see :mod:`.codec`).

Large data (Arrow tables, arrays) is the business of :mod:`snakepit_tasks.zero_copy`: the
encoders take its ``export`` hook (a value -> a JSON stand-in, or None), and a payload whose
stand-ins include a handle is marked with the encoding :data:`ZERO_COPY`; :func:`decode`
takes its ``resolve`` hook to turn stand-ins back into values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import SerializationError
from . import codec
from .codec import BYTES_TAG
from .convert import TOLIST_MAX_ELEMENTS, argument_default, find_problem, result_default
from .markers import is_unserializable, unserializable_info
from .redact import redact

JSON = "json"
#: JSON holding zero-copy handles (``{"__snakepit_zero_copy__": ...}``).
ZERO_COPY = "json+zero-copy"
ENCODINGS = ("", JSON, ZERO_COPY)
_STAND_IN_KEYS = (b'"__snakepit_zero_copy__"', b'"__snakepit_arrow__"')

#: ``export(value)``: a JSON stand-in for large data, or None for any other value.
Export = Callable[[Any], Any]

__all__ = [
    "BYTES_TAG",
    "JSON",
    "ZERO_COPY",
    "TOLIST_MAX_ELEMENTS",
    "check_args",
    "decode",
    "encode_args",
    "encode_result",
    "is_unserializable",
    "redact",
    "unserializable_info",
]

_ARGS_HINT = (
    "pass dicts, lists, strings, numbers (not NaN or infinity), booleans, None or bytes"
)


def _with_export(default: codec.Default, export: Export | None) -> codec.Default:
    if export is None:
        return default

    def exporting(value: Any) -> Any:
        stand_in = export(value)
        return default(value) if stand_in is None else stand_in

    return exporting


def encode_args(args: Any, export: Export | None = None) -> bytes:
    """Strictly JSON-encode call arguments; unencodable input raises SerializationError."""
    try:
        return codec.dumps(args, _with_export(argument_default, export), strict=True)
    except RecursionError:
        raise SerializationError(
            f"arguments are not JSON-encodable: they are nested too deeply; {_ARGS_HINT}",
            {"reason": "nested too deeply"},
        ) from None
    except (TypeError, ValueError) as exc:
        problem = find_problem(args)
        if problem is None:
            raise SerializationError(
                f"arguments are not JSON-encodable: {exc}; {_ARGS_HINT}", {"reason": str(exc)}
            ) from None
        path, type_, what = problem
        raise SerializationError(
            f"arguments are not JSON-encodable: {path} is {what}; {_ARGS_HINT}",
            {"reason": str(exc), "path": path, "type": type_},
        ) from None


def check_args(args: Any) -> None:
    """Raise SerializationError unless ``args`` is a JSON-encodable mapping or None."""
    if args is not None and not isinstance(args, dict):
        raise SerializationError(
            f"arguments must be a dict of keyword arguments, got {type(args).__name__}",
            {"type": type(args).__name__},
        )
    encode_args(args)


def encode_result(value: Any, export: Export | None = None) -> bytes:
    """Encode a tool's result; values JSON cannot hold become readable markers, never errors."""
    try:
        return codec.dumps(value, _with_export(result_default, export), strict=False)
    except RecursionError:
        raise SerializationError(
            "result could not be encoded: it is nested too deeply (about 1,000 levels at most)",
            {"reason": "nested too deeply"},
        ) from None
    except (TypeError, ValueError) as exc:  # a circular reference, a tuple as dict key, ...
        reason = "it contains a circular reference" if "Circular" in str(exc) else str(exc)
        raise SerializationError(
            f"result could not be encoded: {reason}", {"reason": str(exc)}
        ) from None


def has_stand_ins(data: bytes) -> bool:
    """Whether a payload may hold zero-copy stand-ins (handles or inline Arrow values)."""
    return any(key in data for key in _STAND_IN_KEYS)


def decode(
    data: bytes, encoding: str = JSON, resolve: Callable[[Any], Any] | None = None
) -> Any:
    """Decode a payload produced by :func:`encode_args` or :func:`encode_result`; with
    ``resolve``, zero-copy stand-ins in it become values (without, they stay JSON objects)."""
    if encoding not in ENCODINGS:
        raise SerializationError(f"unknown payload encoding {encoding!r}")
    if not data:
        return None
    try:
        value = codec.loads(data)
        return resolve(value) if resolve is not None and has_stand_ins(data) else value
    except RecursionError:
        raise SerializationError(
            "payload could not be decoded: it is nested too deeply (about 1,000 levels at most)",
            {"reason": "nested too deeply"},
        ) from None
    except ValueError as exc:
        raise SerializationError(
            f"payload is not valid JSON: {exc}", {"reason": str(exc)}
        ) from None
