"""What a host tool is, and the rules a registration must follow (those of the original).

Names match ``^[A-Za-z0-9][A-Za-z0-9_\\-.]*$`` and are at most 64 bytes; metadata is a JSON
object of at most 32 entries and 4 KB encoded. Used by the registering process, the node
(for the pool's global tools) and the adapter SDK, so it imports neither Celery nor gRPC.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import SerializationError, ToolRegistrationError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]*")
MAX_NAME_BYTES = 64
MAX_METADATA_ENTRIES = 32
MAX_METADATA_BYTES = 4096
MAX_SESSION_ID = 256
MAX_DESCRIPTION = 1024
#: ``scope`` of a tool registered for one session, and of a tool from a pool's configuration.
SESSION = "session"
GLOBAL = "global"


@dataclass(frozen=True)
class HostToolSpec:
    """A host tool as adapters and registrants see it."""

    name: str
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    exposed: bool = True
    scope: str = SESSION


def check_name(name: Any) -> str:
    """``name`` if it is a valid tool name; ToolRegistrationError (reason invalid_tool_name)."""
    if not isinstance(name, str):
        raise ToolRegistrationError(
            f"a host tool's name must be a string, got {type(name).__name__}",
            {"reason": "invalid_tool_name"},
        )
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ToolRegistrationError(
            f"host tool name {name[:80]!r} is {len(name.encode())} bytes long; the limit is "
            f"{MAX_NAME_BYTES}",
            {"reason": "invalid_tool_name", "name": name[:80]},
        )
    if not NAME_RE.fullmatch(name):
        raise ToolRegistrationError(
            f"invalid host tool name {name!r}: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit",
            {"reason": "invalid_tool_name", "name": name},
        )
    return name


def check_session_id(session_id: Any) -> str:
    """``session_id`` if it can name a session; ToolRegistrationError otherwise."""
    if (
        not isinstance(session_id, str)
        or not session_id
        or len(session_id) > MAX_SESSION_ID
        or not session_id.isprintable()
    ):
        raise ToolRegistrationError(
            f"host tools are registered for a session: session_id must be a non-empty string "
            f"of at most {MAX_SESSION_ID} printable characters, got {session_id!r:.80}",
            {"reason": "invalid_session_id"},
        )
    return session_id


def check_metadata(metadata: Any) -> dict[str, Any]:
    """``metadata`` (None → ``{}``) if it is a JSON object within the limits; else
    ToolRegistrationError (reason invalid_metadata)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ToolRegistrationError(
            f"host tool metadata must be a dict, got {type(metadata).__name__}",
            {"reason": "invalid_metadata"},
        )
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise ToolRegistrationError(
            f"host tool metadata has {len(metadata)} entries; the limit is "
            f"{MAX_METADATA_ENTRIES}",
            {"reason": "invalid_metadata", "entries": len(metadata)},
        )
    bad_keys = [k for k in metadata if not isinstance(k, str)]
    if bad_keys:
        raise ToolRegistrationError(
            f"host tool metadata keys must be strings, got {bad_keys[0]!r}",
            {"reason": "invalid_metadata"},
        )
    try:
        size = len(json.dumps(metadata, allow_nan=False, separators=(",", ":")).encode())
    except (TypeError, ValueError, RecursionError) as exc:
        raise ToolRegistrationError(
            f"host tool metadata is not JSON-encodable: {exc}", {"reason": "invalid_metadata"}
        ) from None
    if size > MAX_METADATA_BYTES:
        raise ToolRegistrationError(
            f"host tool metadata is {size} bytes encoded; the limit is {MAX_METADATA_BYTES}",
            {"reason": "invalid_metadata", "size": size},
        )
    return dict(metadata)


def check_description(description: Any) -> str:
    """``description`` if it is a string of at most 1,024 characters."""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise ToolRegistrationError(
            f"a host tool's description must be a string of at most {MAX_DESCRIPTION} "
            "characters",
            {"reason": "invalid_description"},
        )
    return description


def merge_arguments(name: str, args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """One keyword-argument dict from ``call_host_tool(name, args_dict, **kwargs)``."""
    if args is None:
        return dict(kwargs)
    if not isinstance(args, dict):
        raise SerializationError(
            f"the arguments of host tool {name!r} must be a dict of keyword arguments, got "
            f"{type(args).__name__}",
            {"tool": name, "type": type(args).__name__},
        )
    both = sorted(set(args) & set(kwargs))
    if both:
        raise SerializationError(
            f"host tool {name!r}: {', '.join(map(str, both))} given both in the dict and as "
            "keywords",
            {"tool": name},
        )
    return {**args, **kwargs}
