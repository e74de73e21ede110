"""Quick start: call the showcase pool that `snakepit-tasks worker` serves (README, first screen).

Needs a Redis on 127.0.0.1:6379 (or SNAKEPIT_REDIS_URL) and a running `snakepit-tasks worker`
that uses the same one. No configuration is needed: without one there is a pool "default" of
two workers running the showcase adapter (adapters/showcase.py).
"""

import snakepit_tasks as sp

print(sp.execute("add", {"a": 2, "b": 40}))                   # 42, computed in a worker process
sp.execute_in_session("user-7", "remember", {"key": "k", "value": 1})
print(sp.execute_in_session("user-7", "recall", {"key": "k"})["value"])  # 1: same worker
for chunk in sp.stream("stream_count", {"n": 3}):              # partial results, in order
    print("chunk", chunk["i"])
print(sp.execute_async("sleep", {"seconds": 0.2}).get(timeout=10)["slept"])  # an AsyncResult
