"""Streaming: chunks in order as the tool yields them, a callback that halts, a late reader.

    python examples/streaming.py
"""

from __future__ import annotations

from _common import say, use_pool

import snakepit_tasks as sp


def main() -> None:
    stream = sp.stream("stream_count", {"n": 5, "delay": 0.05})
    for chunk in stream:
        say(f"chunk {chunk['_metadata']['seq']}", chunk["i"])
    say("final result", stream.result["count"])

    seen: list[int] = []

    def on_chunk(chunk: dict) -> object:
        seen.append(chunk["i"])
        return sp.HALT if chunk["i"] == 3 else None  # stop the tool after three

    say("execute_stream with a callback that halts", sp.execute_stream(
        "stream_count", {"n": 100, "delay": 0.01}, on_chunk))
    say("  chunks it saw", seen)

    # A late reader (another request, another process) reads the same chunks by task id,
    # from the start or after any chunk.
    batch = sp.stream("batch_process", {"items": ["a", "b", "c", "d"], "delay": 0.05})
    task_id = batch.id
    done = sum(1 for _ in batch)  # read to the end
    late = [c["result"] for c in sp.stream_result(task_id, after=2)]
    say(f"stream_result({task_id[:8]}..., after=2) of {done} chunks", late)


if __name__ == "__main__":
    use_pool()
    sp.run_as_script(main, exit_mode="stop")
