"""Payload encoding between caller, node and adapter (JSON today, tagged for more)."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

from .errors import SerializationError

JSON = "json"
TOLIST_MAX_ELEMENTS = 1_000_000


def encode_args(args: Any) -> bytes:
    """Strictly JSON-encode call arguments; unencodable input raises SerializationError."""
    try:
        return json.dumps(args, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"arguments are not JSON-encodable: {exc}; pass dicts, lists, strings, numbers, "
            "booleans or None",
            {"reason": str(exc)},
        ) from None


def check_args(args: Any) -> None:
    """Raise SerializationError unless ``args`` is a JSON-encodable mapping or None."""
    if args is not None and not isinstance(args, dict):
        raise SerializationError(
            f"arguments must be a dict of keyword arguments, got {type(args).__name__}",
            {"type": type(args).__name__},
        )
    encode_args(args)


def _to_jsonable(value: Any) -> Any:
    for method in ("model_dump", "to_dict", "_asdict"):
        fn = getattr(value, method, None)
        if callable(fn):
            return fn()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        size = getattr(value, "size", 0)
        if isinstance(size, int) and size <= TOLIST_MAX_ELEMENTS:
            return tolist()
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return {"__ffi_unserializable__": True, "__type__": type(value).__qualname__}


def encode_result(value: Any) -> bytes:
    """Encode a tool's result; values JSON cannot hold become readable markers, never errors."""
    try:
        return json.dumps(value, separators=(",", ":"), default=_to_jsonable).encode()
    except (TypeError, ValueError) as exc:  # circular reference, non-string dict keys, ...
        raise SerializationError(f"result could not be encoded: {exc}") from None


def decode(data: bytes, encoding: str = JSON) -> Any:
    """Decode a payload produced by :func:`encode_args` or :func:`encode_result`."""
    if encoding not in ("", JSON):
        raise SerializationError(f"unknown payload encoding {encoding!r}")
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise SerializationError(f"payload is not valid JSON: {exc}") from None
