"""The entries of a call's Redis stream: chunks, then one final entry with the outcome."""

from __future__ import annotations

import json
from typing import Any

from .. import serialization
from ..errors import SnakepitError, from_wire, to_wire

DATA = b"d"
FINAL = b"f"
OK = b"ok"
RESULT = b"r"
ERROR = b"e"


def chunk_fields(data: bytes) -> dict[bytes, bytes]:
    """Fields of a chunk entry (``data`` is the JSON the adapter produced)."""
    return {DATA: data}


def final_fields(result: Any) -> dict[bytes, bytes]:
    """Fields of the final entry of a call that succeeded."""
    return {FINAL: b"1", OK: b"1", RESULT: serialization.encode_result(result)}


def error_fields(exc: SnakepitError) -> dict[bytes, bytes]:
    """Fields of the final entry of a call that failed."""
    return {FINAL: b"1", OK: b"0", ERROR: json.dumps(to_wire(exc), default=str).encode()}


def seq_of(entry_id: bytes | str) -> int:
    """The chunk number of a stream entry id (``0-<seq>``)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[1])


def to_chunk(entry_id: bytes | str, fields: dict[bytes, bytes], call_id: str) -> dict[str, Any]:
    """The chunk a caller sees: a dict (non-dict values under ``data``) plus metadata."""
    value = serialization.decode(fields[DATA])
    chunk = dict(value) if isinstance(value, dict) else {"data": value}
    chunk["is_final"] = False
    chunk["_metadata"] = {"seq": seq_of(entry_id), "call_id": call_id}
    return chunk


def outcome(fields: dict[bytes, bytes]) -> Any:
    """The final result of a final entry, or raise its error as the original class."""
    if fields.get(OK) == b"1":
        return serialization.decode(fields.get(RESULT, b""))
    raise from_wire(json.loads(fields.get(ERROR, b"{}")), "streaming call failed")
