"""Length-prefixed protobuf frames over a stream socket: how a node and its runtime exchange
``Calls`` frames on a worker's call socket (imported by both sides).

A frame is a 4-byte big-endian length and that many bytes of one serialized message.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

from .limits import MAX_MESSAGE_BYTES

_HEADER = struct.Struct("!I")

#: The largest frame either side accepts: a message, and room for the frame around it.
MAX_FRAME_BYTES = MAX_MESSAGE_BYTES + 64 * 1024

_RECV_BYTES = 256 * 1024


class FrameError(Exception):
    """The socket carried something that is not a frame (a length over the limit)."""


def send(sock: socket.socket, message: Any) -> None:
    """Write ``message`` (a protobuf message) as one frame."""
    data = message.SerializeToString()
    sock.sendall(_HEADER.pack(len(data)) + data)


class FrameReader:
    """Reads frames from ``sock``, one buffer kept between reads."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def read(self) -> bytes:
        """The next frame's bytes. Raises EOFError when the peer closed the socket, OSError
        (``socket.timeout`` included) as the socket does, FrameError on a bad length."""
        buffer = self._buffer
        while True:
            if len(buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(buffer)
                if size > MAX_FRAME_BYTES:
                    raise FrameError(f"a frame of {size} bytes, over {MAX_FRAME_BYTES}")
                end = _HEADER.size + size
                if len(buffer) >= end:
                    data = bytes(buffer[_HEADER.size:end])
                    del buffer[:end]
                    return data
            chunk = self._sock.recv(_RECV_BYTES)
            if not chunk:
                raise EOFError("the peer closed the socket")
            buffer += chunk

    def frames(self) -> Iterator[bytes]:
        """Every frame until the peer closes the socket (or it fails)."""
        while True:
            try:
                yield self.read()
            except (EOFError, OSError, FrameError):
                return
