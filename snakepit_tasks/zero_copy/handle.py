"""What travels in a message instead of large data: a handle (or, below the threshold, the
Arrow IPC bytes themselves), as a tagged JSON object, and the options that decide which."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError

#: Key of a handle: ``{"__snakepit_zero_copy__": 1, "id": ..., ...}`` (reserved).
HANDLE_TAG = "__snakepit_zero_copy__"
#: Key of a small value inline: ``{"__snakepit_arrow__": <bytes of an Arrow IPC stream>}``.
INLINE_TAG = "__snakepit_arrow__"
TRANSPORTS = ("auto", "shm", "flight")
VERSION = 1


@dataclass(frozen=True)
class Options:
    """The zero-copy settings one process applies (see :meth:`from_settings`)."""

    threshold_bytes: int = 1024 * 1024
    ttl_ms: int = 300_000
    transport: str = "auto"
    flight_host: str = "127.0.0.1"
    arena_idle_ms: int = 30_000

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ConfigurationError(
                f"zero_copy_transport must be one of {', '.join(TRANSPORTS)}, "
                f"got {self.transport!r}"
            )

    @classmethod
    def from_settings(cls, settings: Any) -> Options:
        """The options of a :class:`~snakepit_tasks.config.Settings`."""
        return cls(
            threshold_bytes=settings.zero_copy_threshold_bytes,
            ttl_ms=settings.zero_copy_ttl_ms,
            transport=settings.zero_copy_transport,
            flight_host=settings.zero_copy_flight_host,
            arena_idle_ms=settings.zero_copy_arena_idle_ms,
        )

    @property
    def offers_shm(self) -> bool:
        return self.transport in ("auto", "shm")

    @property
    def offers_flight(self) -> bool:
        return self.transport in ("auto", "flight")


@dataclass(frozen=True)
class Handle:
    """Where a value lives: segment ``fd`` of process ``pid`` on host ``host`` (shared
    memory), and/or an Arrow Flight ``flight`` location serving ticket ``id``."""

    id: str
    kind: str  # table | batch | ndarray | torch
    size: int  # bytes of the Arrow IPC stream
    expires_at: float  # epoch seconds; the owner frees the memory after this
    owner: str  # who holds the memory: "runtime <worker id>", "caller", ...
    host: str = ""
    pid: int = 0
    fd: int = -1
    flight: str = ""

    @property
    def has_shm(self) -> bool:
        return bool(self.host) and self.pid > 0 and self.fd >= 0

    def to_wire(self) -> dict[str, Any]:
        """The tagged JSON object that stands for the value in a message."""
        wire: dict[str, Any] = {HANDLE_TAG: VERSION, "id": self.id, "kind": self.kind,
                                "size": self.size, "expires_at": self.expires_at,
                                "owner": self.owner}
        if self.has_shm:
            wire.update(host=self.host, pid=self.pid, fd=self.fd)
        if self.flight:
            wire["flight"] = self.flight
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Handle:
        """A handle from its JSON object; ValueError when it is not a well-formed one."""
        if wire.get(HANDLE_TAG) != VERSION:
            raise ValueError(f"not a version-{VERSION} zero-copy handle")
        try:
            return cls(
                id=_text(wire["id"]), kind=_text(wire["kind"]), size=_int(wire["size"]),
                expires_at=float(wire["expires_at"]), owner=_text(wire.get("owner", "")),
                host=_text(wire.get("host", "")), pid=_int(wire.get("pid", 0)),
                fd=_int(wire.get("fd", -1)), flight=_text(wire.get("flight", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed zero-copy handle: {exc!r}") from None


def is_handle(value: Any) -> bool:
    """Whether ``value`` is a handle's JSON object."""
    return isinstance(value, dict) and HANDLE_TAG in value


def is_inline(value: Any) -> bool:
    """Whether ``value`` is an inline Arrow value's JSON object."""
    return isinstance(value, dict) and len(value) == 1 and INLINE_TAG in value


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 512:
        raise TypeError(f"expected a short string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value
