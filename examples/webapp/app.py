"""A web page that starts a job on the pool, polls its state and streams its progress live.

    pip install 'snakepit-tasks[examples]'
    python examples/webapp/app.py            # http://127.0.0.1:5000 (PORT, HOST to change)

- ``POST /jobs`` starts a streaming call with ``execute.delay(..., stream=True)`` and returns
  its task id;
- ``GET /jobs/<id>`` is its state from ``AsyncResult`` (the page polls it);
- ``GET /jobs/<id>/events`` streams its chunks as Server-Sent Events read with
  ``sp.stream_result(id, after=N)``. Each event's id is the chunk's number, so a browser
  that reconnects (it sends ``Last-Event-ID``) resumes after the last chunk it got: nothing
  lost, nothing twice.

The web process only sends calls and reads Redis; the pool's nodes run the tools. Started
alone, the script brings a pool of its own (``sp.run_as_script``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request

import snakepit_tasks as sp
from snakepit_tasks import tasks  # tasks.execute: the Celery task (app built on first use)

#: How long the browser waits before reconnecting a dropped event stream (ms).
RETRY_MS = 500

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>snakepit job</title>
<style>body{font-family:sans-serif;margin:2em}code{background:#eee;padding:0 .3em}</style>
</head><body>
<h1>Batch job</h1>
<form id="start">
  items <input id="n" type="number" value="20" min="1" max="1000">
  seconds apart <input id="delay" type="number" value="0.2" step="0.05" min="0">
  <button id="go">Start</button>
</form>
<p>job <code id="job">-</code> state <b id="state">-</b>
   reconnects <span id="reconnects">0</span> <span id="finished"></span></p>
<pre id="result"></pre>
<ol id="chunks"></ol>
<script>
const $ = (id) => document.getElementById(id);
let reconnects = 0;
$("start").onsubmit = async (event) => {
  event.preventDefault();
  const body = JSON.stringify({n: Number($("n").value), delay: Number($("delay").value)});
  const reply = await fetch("/jobs", {method: "POST", body,
                                      headers: {"Content-Type": "application/json"}});
  const {id} = await reply.json();
  $("job").textContent = id;
  $("chunks").innerHTML = "";
  watch(id);
};
function watch(id) {
  const poll = setInterval(async () => {           // the job's state, from AsyncResult
    try {
      const state = await (await fetch(`/jobs/${id}`)).json();
      $("state").textContent = state.state;
      if (state.state === "SUCCESS" || state.state === "FAILURE") clearInterval(poll);
    } catch (e) { /* the server is briefly unreachable: poll again */ }
  }, 300);
  const source = new EventSource(`/jobs/${id}/events`);   // its chunks, live
  source.onmessage = (event) => {
    const chunk = JSON.parse(event.data);
    const item = document.createElement("li");
    item.dataset.seq = event.lastEventId;
    item.textContent = `${chunk.i} of ${chunk.of}`;
    $("chunks").appendChild(item);
  };
  source.addEventListener("done", (event) => {
    $("result").textContent = event.data;
    $("finished").textContent = "finished";
    source.close();
  });
  source.addEventListener("failed", (event) => {
    $("result").textContent = event.data;
    $("finished").textContent = "failed";
    source.close();
  });
  source.onerror = () => { $("reconnects").textContent = ++reconnects; };  // it retries
}
</script>
</body></html>
"""


def sse(data: Any, *, event: str | None = None, event_id: int | None = None) -> str:
    """One Server-Sent Event."""
    head = (f"event: {event}\n" if event else "") + (
        f"id: {event_id}\n" if event_id is not None else "")
    return f"{head}data: {json.dumps(data)}\n\n"


def resume_point() -> int:
    """The last chunk the browser has: ``Last-Event-ID`` on a reconnect, else ``?after=``."""
    raw = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
    try:
        return max(0, int(raw))
    except ValueError:
        return 0


def create_web_app() -> Flask:
    """The Flask app (send calls, poll states, stream chunks)."""
    web = Flask(__name__)

    @web.get("/")
    def index() -> str:
        return PAGE

    @web.post("/jobs")
    def start() -> tuple[Response, int]:
        body = request.get_json(silent=True) or {}
        n, delay = int(body.get("n", 20)), float(body.get("delay", 0.2))
        result = tasks.execute.delay("stream_count", {"n": n, "delay": delay}, stream=True)
        return jsonify({"id": result.id}), 202

    @web.get("/jobs/<task_id>")
    def state(task_id: str) -> Response:
        result = sp.get_result(task_id)
        found: dict[str, Any] = {"id": task_id, "state": result.state}
        if result.failed():
            found["error"] = str(result.result)
        elif result.successful():
            found["result"] = result.result
        return jsonify(found)

    @web.get("/jobs/<task_id>/events")
    def events(task_id: str) -> Response:
        after = resume_point()

        def generate() -> Iterator[str]:
            yield f"retry: {RETRY_MS}\n\n"
            stream = sp.stream_result(task_id, after=after)
            try:
                for chunk in stream:
                    yield sse(chunk, event_id=chunk["_metadata"]["seq"])
                yield sse(stream.result, event="done")
            except sp.SnakepitError as exc:
                yield sse({"error": f"{type(exc).__name__}: {exc}"}, event="failed")
            finally:
                stream.close()  # only stops reading: the call goes on

        return Response(generate(), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return web


def serve() -> None:
    """Serve on HOST:PORT until SIGTERM or Ctrl-C."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "5000"))
    create_web_app().run(host=host, port=port, threaded=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/_common.py
    from _common import use_pool

    use_pool()
    sp.run_as_script(serve)
