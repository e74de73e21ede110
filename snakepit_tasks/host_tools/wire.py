"""The messages between a node and a registering process, through Redis lists.

A request is a JSON header line, a newline, then the arguments as the adapter encoded them
(so the node never decodes them). A reply is ``b"1"`` and the result's JSON, or ``b"0"`` and
an error object ``{"kind", "type", "message", "traceback"}``; kinds are those of the proto's
``ErrorInfo`` for HostTools (tool_not_found, host_tool, timeout, serialization, bad_request).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

OK = b"1"
FAILED = b"0"

TOOL_NOT_FOUND = "tool_not_found"
HOST_TOOL = "host_tool"
TIMEOUT = "timeout"
SERIALIZATION = "serialization"
BAD_REQUEST = "bad_request"


@dataclass(frozen=True)
class Request:
    """One call of a host tool, as the registrant receives it."""

    id: str
    session_id: str
    tool: str
    deadline: float  # epoch seconds: after it, nobody waits for the answer
    args: bytes  # JSON
    call_id: str = ""
    worker_id: str = ""
    capacity: int = 1  # calls the calling worker serves at once (re-entrancy checks)


def encode_request(req: Request) -> bytes:
    """The request as pushed to the registrant's list."""
    header = {
        "id": req.id,
        "session_id": req.session_id,
        "tool": req.tool,
        "deadline": req.deadline,
        "call_id": req.call_id,
        "worker_id": req.worker_id,
        "capacity": req.capacity,
    }
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + (req.args or b"{}")


def decode_request(body: bytes) -> Request:
    """The request in ``body``; ValueError when it is not one."""
    header_bytes, sep, args = body.partition(b"\n")
    header: Any = json.loads(header_bytes)
    if not sep or not isinstance(header, dict):
        raise ValueError("not a host-tool request")
    return Request(
        id=str(header["id"]),
        session_id=str(header.get("session_id") or ""),
        tool=str(header["tool"]),
        deadline=float(header["deadline"]),
        args=args,
        call_id=str(header.get("call_id") or ""),
        worker_id=str(header.get("worker_id") or ""),
        capacity=int(header.get("capacity") or 1),
    )


def ok_reply(result_json: bytes) -> bytes:
    """A reply carrying an encoded result."""
    return OK + result_json


def error_reply(kind: str, message: str, type_: str = "", traceback: str = "") -> bytes:
    """A reply carrying an error."""
    body = {"kind": kind, "type": type_, "message": message, "traceback": traceback}
    return FAILED + json.dumps(body, default=str).encode()


def decode_reply(body: bytes) -> tuple[bool, bytes | dict[str, str]]:
    """(True, result JSON) or (False, the error object)."""
    if body[:1] == OK:
        return True, body[1:]
    try:
        error: Any = json.loads(body[1:])
    except ValueError:
        error = None
    if not isinstance(error, dict):
        error = {"kind": BAD_REQUEST, "message": f"unreadable reply {body[:80]!r}"}
    return False, {k: str(error.get(k) or "") for k in ("kind", "type", "message", "traceback")}
