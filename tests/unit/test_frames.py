"""snakepit_tasks.bridge.frames: length-prefixed protobuf frames over a real socket pair."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from snakepit_tasks._proto import bridge_pb2 as pb
from snakepit_tasks.bridge import frames


def test_frames_arrive_whole_however_the_bytes_are_split() -> None:
    left, right = socket.socketpair()
    with left, right:
        sent = [pb.CallReply(id=i, response=pb.ExecuteResponse(ok=True)) for i in range(1, 4)]
        big = pb.CallReply(id=9, response=pb.ExecuteResponse(
            ok=True, result=pb.Payload(data=b"x" * 3_000_000, encoding="json")))
        wire = b"".join(struct.pack("!I", m.ByteSize()) + m.SerializeToString()
                        for m in [*sent, big])

        def trickle() -> None:  # a byte, then the rest in uneven pieces
            left.sendall(wire[:1])
            for start in range(1, len(wire), 7919):
                left.sendall(wire[start:start + 7919])
            left.close()

        writer = threading.Thread(target=trickle)
        writer.start()
        got = [pb.CallReply.FromString(data) for data in frames.FrameReader(right).frames()]
        writer.join(10)
        assert [m.id for m in got] == [1, 2, 3, 9]
        assert got[-1].response.result.data == b"x" * 3_000_000


def test_send_writes_one_frame_the_reader_reads() -> None:
    left, right = socket.socketpair()
    with left, right:
        frames.send(left, pb.CallFrame(id=7, cancel=True))
        frame = pb.CallFrame.FromString(frames.FrameReader(right).read())
        assert frame.id == 7 and frame.cancel


def test_a_closed_peer_and_a_bad_length_are_told_apart() -> None:
    left, right = socket.socketpair()
    with right:
        left.close()
        with pytest.raises(EOFError):
            frames.FrameReader(right).read()
    left, right = socket.socketpair()
    with left, right:
        left.sendall(struct.pack("!I", frames.MAX_FRAME_BYTES + 1))
        with pytest.raises(frames.FrameError, match="over"):
            frames.FrameReader(right).read()
