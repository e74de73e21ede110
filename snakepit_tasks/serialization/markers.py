"""Markers for result values JSON cannot hold: ``{"__ffi_unserializable__": true, ...}``.

``__type__`` is the module-qualified type name (``"socket.socket"``). What else a marker
carries is read from the environment when a marker is made:

``SNAKEPIT_UNSERIALIZABLE_DETAIL``
    ``none`` (default): the type only. ``type``: ``"__repr__": "<unserializable T>"``, a
    placeholder naming the type (as the original snakepit does). ``repr_truncated``: the
    value's ``repr()``, truncated. ``repr_redacted_truncated``: the same after :func:`redact`.
    Any other value means ``none``.
``SNAKEPIT_UNSERIALIZABLE_REPR_MAXLEN``
    Characters of repr kept, 0-2000 (default 500); a longer repr ends in ``"..."``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from .redact import redact

UNSERIALIZABLE_KEY = "__ffi_unserializable__"
TYPE_KEY = "__type__"
REPR_KEY = "__repr__"

DETAIL_ENV = "SNAKEPIT_UNSERIALIZABLE_DETAIL"
MAXLEN_ENV = "SNAKEPIT_UNSERIALIZABLE_REPR_MAXLEN"
DETAIL_MODES = ("none", "type", "repr_truncated", "repr_redacted_truncated")
REPR_MAXLEN = 500
REPR_MAXLEN_LIMIT = 2000
# Redacting a huge repr would cost more than the marker is worth: only this much beyond the
# kept length is redacted (a secret that starts inside the kept part is still found whole).
_REDACT_MARGIN = 256


def type_name(value: Any) -> str:
    """``module.QualifiedName`` of ``value``'s type."""
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def marker(value: Any) -> dict[str, Any]:
    """The marker that stands in for ``value`` in a result."""
    name = type_name(value)
    made: dict[str, Any] = {UNSERIALIZABLE_KEY: True, TYPE_KEY: name}
    mode = _detail_mode(os.environ.get(DETAIL_ENV, ""))
    if mode == "type":
        made[REPR_KEY] = f"<unserializable {name}>"
    elif mode != "none":
        maxlen = _repr_maxlen(os.environ.get(MAXLEN_ENV, ""))
        text = _repr(value, name)
        if mode == "repr_redacted_truncated":
            text = redact(text[: maxlen + _REDACT_MARGIN])
        made[REPR_KEY] = text if len(text) <= maxlen else text[:maxlen] + "..."
    return made


def is_unserializable(value: Any) -> bool:
    """Whether ``value`` is a marker left where a result held something JSON cannot hold."""
    return isinstance(value, dict) and value.get(UNSERIALIZABLE_KEY) is True


def unserializable_info(value: Any) -> dict[str, Any] | None:
    """``{"type": ..., "repr": ...}`` (repr only when the marker has one) or None."""
    if not is_unserializable(value):
        return None
    info = {"type": value.get(TYPE_KEY)}
    if REPR_KEY in value:
        info["repr"] = value[REPR_KEY]
    return info


def _repr(value: Any, name: str) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<repr failed for {name}>"


@functools.lru_cache(maxsize=8)
def _detail_mode(raw: str) -> str:
    mode = raw.strip().lower() or "none"
    return mode if mode in DETAIL_MODES else "none"


@functools.lru_cache(maxsize=8)
def _repr_maxlen(raw: str) -> int:
    try:
        length = int(raw.strip())
    except ValueError:
        return REPR_MAXLEN
    return max(0, min(length, REPR_MAXLEN_LIMIT))
