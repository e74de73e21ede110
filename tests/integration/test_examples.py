"""Every script in examples/ runs against the real stack: the test's Redis, and the node the
script starts itself through ``sp.run_as_script`` (which must leave no process behind).
The web app's page is tested in a browser by test_webapp.py; here it runs on its own pool."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import pytest
from browser import http_get, wait_http
from helpers import REPO, subprocess_env, terminate, unique_pool, wait_until

from snakepit_tasks.embedded_redis import free_port

pytestmark = pytest.mark.timeout(240)

EXAMPLES = REPO / "examples"

#: script -> what its output must show
EXPECTED = {
    "basic.py": ["pong from", "->  42", "raised AdapterError", "raised ToolNotFound",
                 "get_result(id).get()  ->  0.2", ".get()  ->  3"],
    "sessions.py": ["alice: recall colour x3  ->  'green', always from",
                    "bob: recall colour x3  ->  'blue', always from",
                    "sessions in the pool  ->  ['alice', 'bob']"],
    "streaming.py": ["chunk 5  ->  5", "final result  ->  5", "chunks it saw  ->  [1, 2, 3]",
                     "of 4 chunks  ->  ['C', 'D']"],
    "concurrency.py": ["execute_batch of 10 adds, 4 at a time  ->  [0, 2, 4",
                       "celery group of 5 adds  ->  [100, 101, 102, 103, 104]"],
    "hardware_detection.py": ["cpu:", "capabilities:", "device for a model"],
    "crash_recovery.py": ["raised WorkerCrashed", "the pool still serves  ->  pong",
                          "'crashes': 1", "pong after 2 attempts", "breaker is  ->  open",
                          "raised CircuitOpen", "the breaker is  ->  closed"],
    "thread_profile.py": ["4 x sleep(0.5) at once", "in 1 process(es)"],
    "large_data.py": ["rows, mapped: True", "in shared memory: True",
                      "an array comes back as an array"],
    "devices.py": ["this host:", "capabilities:", "runs on"],
    "bidirectional_tools.py": ["host tools of the session  ->  ['calculate_hash']",
                               "computed in this process  ->  True",
                               "the adapter's call raised  ->  AdapterError"],
    "beat_batch.py": ["beat sent nightly-batch as task", "1/6 alpha  ->  ALPHA",
                      "6/6 foxtrot  ->  FOXTROT", "'processed': 6"],
}


def test_every_example_is_run_here() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    # quickstart.py talks to a `snakepit-tasks worker` started beside it, as the README says:
    # tests/integration/test_first_contact.py runs it that way.
    assert scripts - {"quickstart.py"} == set(EXPECTED)
    assert (EXAMPLES / "webapp" / "app.py").is_file()


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example(script, redis_url, pids):
    env = subprocess_env(redis_url, SNAKEPIT_EXAMPLES_POOL=unique_pool("ex"))
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / script)], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    pids.track(proc.pid)
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        terminate(proc, 10)
        out, _ = proc.communicate()
        pytest.fail(f"{script} did not finish:\n{out}")
    assert proc.returncode == 0, out
    for expected in EXPECTED[script]:
        assert expected in out, f"{expected!r} not in the output of {script}:\n{out}"


def test_webapp_brings_its_own_pool_and_stops_cleanly(redis_url, pids, tmp_path):
    port = free_port()
    log = tmp_path / "webapp.log"
    env = subprocess_env(redis_url, SNAKEPIT_EXAMPLES_POOL=unique_pool("web"), PORT=str(port))
    with open(log, "wb") as out:
        web = subprocess.Popen([sys.executable, str(EXAMPLES / "webapp" / "app.py")], cwd=REPO,
                               env=env, stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT)
    pids.track(web.pid)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/", web, log, timeout=90)
        request = urllib.request.Request(base + "/jobs", data=b'{"n": 3, "delay": 0}',
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            task_id = json.load(reply)["id"]
        status, body = http_get(f"{base}/jobs/{task_id}/events?after=1", timeout=60)
        text = body.decode()
        assert status == 200 and "id: 1\n" not in text, text  # resumed after chunk 1
        assert "id: 2\n" in text and "id: 3\n" in text and "event: done" in text, text
        wait_until(lambda: json.loads(http_get(f"{base}/jobs/{task_id}")[1])["state"]
                   == "SUCCESS", timeout=30, message="the job's state SUCCESS")
    finally:
        pids.sample()
        web.send_signal(signal.SIGTERM)
        try:
            rc = web.wait(60)
        except subprocess.TimeoutExpired:
            terminate(web, 5)
            pytest.fail(f"the web app ignored SIGTERM:\n{log.read_text()}")
    assert rc == 0, log.read_text()
