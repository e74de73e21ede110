"""Flower on a live pool: nodes, pool and node queues, calls named after their tool; logged in
with basic auth from headless Chromium. Screenshots: tests/artifacts/flower-*.png."""

from __future__ import annotations

import json
import subprocess

import pytest
from browser import basic_auth, chrome, http_get, page_text, screenshot, wait_http
from helpers import REPO, cli_command, sent_call_ids, subprocess_env, terminate, wait_until

from snakepit_tasks import caller, keys
from snakepit_tasks.embedded_redis import free_port

pytestmark = pytest.mark.timeout(240)

USER, PASSWORD = "admin", "flower-test-secret"
AUTH = basic_auth(USER, PASSWORD)


def squeezed(text: str) -> str:
    """``text`` without white space (long names wrap in table cells)."""
    return "".join(text.split())


def api(base: str, path: str) -> object:
    status, body = http_get(base + path, AUTH)
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


def test_flower_refuses_to_start_without_auth(redis_url, pids):
    done = subprocess.run(
        [*cli_command(), "flower", "--port=1"], cwd=REPO, env=subprocess_env(redis_url),
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "--basic-auth=USER:PASSWORD" in done.stderr and "--unsafe-no-auth" in done.stderr


def test_flower_shows_nodes_queues_and_calls_by_tool_name(node, redis_url, pids, tmp_path):
    handle = node(pool_size=1, env={"SNAKEPIT_TASK_EVENTS": "true"})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "flower.log"
    with open(log, "wb") as out:
        flower = subprocess.Popen(
            [*cli_command(), "flower", "--address=127.0.0.1", f"--port={port}",
             f"--basic-auth={USER}:{PASSWORD}"],
            cwd=REPO, env=subprocess_env(redis_url, [handle.table]),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    pids.track(flower.pid)
    try:
        wait_http(base + "/healthcheck", flower, log)
        assert http_get(base + "/api/workers")[0] == 401, "the API answered without credentials"
        # The node's heartbeats reach Flower: it is listed online (task events flow too).
        wait_until(
            lambda: any(w.get("hostname") == handle.name and w.get("status")
                        for w in api(base, "/workers?json=1")["data"]),  # type: ignore[index]
            timeout=60, message=lambda: f"{handle.name} online in Flower:\n{log.read_text()}",
        )

        result = caller.execute_async("add", {"a": 2, "b": 40}, pool=handle.pool,
                                      app=handle.app)
        assert result.get(timeout=60) == 42

        pool_queue, node_queue = keys.pool_queue(handle.pool), keys.node_queue(handle.name)
        workers = api(base, "/api/workers?refresh=1")
        assert isinstance(workers, dict) and handle.name in workers, workers
        consumed = {q["name"] for q in workers[handle.name]["active_queues"]}
        assert {pool_queue, node_queue} <= consumed
        lengths = api(base, "/api/queues/length")
        names = {q["name"] for q in lengths["active_queues"]}  # type: ignore[index]
        assert {pool_queue, node_queue} <= names, lengths

        def finished() -> dict[str, object] | None:
            task = api(base, "/api/tasks").get(result.id)  # type: ignore[union-attr]
            return task if task and task.get("state") == "SUCCESS" else None

        task = wait_until(finished, timeout=60, message="the call finished, in Flower")
        assert task["name"] == "add"
        assert task["worker"] == handle.name
        assert task["result"] == "42"
        assert "'a': 2" in task["kwargs"] and handle.pool in task["kwargs"]
        assert "deadline" not in task["kwargs"]
        assert task["runtime"] is not None and task["runtime"] >= 0

        # A synchronous call takes the fast lane: the node sends its task events itself.
        with sent_call_ids() as sent:
            assert caller.execute("add", {"a": 1, "b": 2}, pool=handle.pool,
                                  app=handle.app) == 3
        assert handle.app.snakepit_settings.fast_lane and sent

        def fast_finished() -> dict[str, object] | None:
            found = api(base, "/api/tasks").get(sent[0])  # type: ignore[union-attr]
            return found if found and found.get("state") == "SUCCESS" else None

        fast = wait_until(fast_finished, timeout=60, message="the fast-lane call, in Flower")
        assert fast["name"] == "add" and fast["worker"] == handle.name
        assert fast["result"] == "3" and fast["runtime"] >= 0

        with chrome(pids, headers=AUTH) as driver:
            driver.get(base + "/workers")
            wait_until(lambda: handle.name in squeezed(page_text(driver))
                       and "Online" in page_text(driver),
                       timeout=60, message=lambda: f"the node on the workers page: "
                       f"{page_text(driver)!r}")
            screenshot(driver, "flower-workers")
            driver.get(base + "/tasks")
            wait_until(lambda: result.id in squeezed(page_text(driver)), timeout=60,
                       message=lambda: f"the call on the tasks page: {page_text(driver)!r}")
            text = page_text(driver)
            assert "add" in text.split() and "SUCCESS" in text, text
            screenshot(driver, "flower-tasks")
            driver.get(f"{base}/task/{result.id}")
            wait_until(lambda: "SUCCESS" in page_text(driver), timeout=30,
                       message=lambda: f"the task page: {page_text(driver)!r}")
            text = page_text(driver)
            assert "add" in text.split() and "42" in text and handle.name in squeezed(text)
            screenshot(driver, "flower-task")
            driver.get(base + "/broker")
            wait_until(lambda: node_queue in squeezed(page_text(driver)), timeout=30,
                       message=lambda: f"the queues on the broker page: {page_text(driver)!r}")
            assert pool_queue in squeezed(page_text(driver))
            screenshot(driver, "flower-broker")
    finally:
        terminate(flower, 15)
