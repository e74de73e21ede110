"""Limits the node and the adapter runtime must agree on (imported by both sides)."""

from __future__ import annotations

#: Largest gRPC message between node and runtime (arguments, results, chunks).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
