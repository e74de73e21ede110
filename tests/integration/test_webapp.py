"""examples/webapp in headless Chromium: a job started from the page, its state polled, its
chunks streamed live (SSE) in order, resumed without loss or repeat after the connection
drops mid-stream. Screenshot: tests/artifacts/webapp.png."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from browser import DroppingProxy, chrome, page_text, screenshot, wait_http
from helpers import REPO, assert_served_by, subprocess_env, terminate, wait_until

from snakepit_tasks.embedded_redis import free_port

pytestmark = pytest.mark.timeout(240)

CHUNKS = 40
SECONDS_APART = 0.15
SEQS = "return [...document.querySelectorAll('#chunks li')].map(li => Number(li.dataset.seq))"


def test_page_streams_every_chunk_once_in_order_across_a_dropped_connection(
    node, redis_url, pids, tmp_path
):
    handle = node(pool_size=1)
    port = free_port()
    log = tmp_path / "webapp.log"
    env = subprocess_env(redis_url, [handle.table], HOST="127.0.0.1", PORT=str(port))
    with open(log, "wb") as out:
        web = subprocess.Popen([sys.executable, str(REPO / "examples" / "webapp" / "app.py")],
                               cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT)
    pids.track(web.pid)
    proxy = DroppingProxy(port)
    try:
        wait_http(f"http://127.0.0.1:{port}/", web, log)
        with chrome(pids) as driver:
            driver.get(f"http://127.0.0.1:{proxy.port}/")
            driver.execute_script(
                f"document.getElementById('n').value = {CHUNKS};"
                f"document.getElementById('delay').value = {SECONDS_APART};"
            )
            driver.find_element("id", "go").click()
            wait_until(lambda: len(driver.execute_script(SEQS)) >= 8, timeout=60,
                       message=lambda: f"chunks on the page: {page_text(driver)!r}\n"
                       f"{log.read_text()}")
            assert proxy.drop() > 0
            shown_at_drop = len(driver.execute_script(SEQS))
            assert shown_at_drop < CHUNKS, "the stream ended before the connection dropped"
            wait_until(lambda: driver.find_element("id", "finished").text == "finished",
                       timeout=90, message=lambda: f"the stream's end: {page_text(driver)!r}")
            assert int(driver.find_element("id", "reconnects").text) >= 1
            assert driver.execute_script(SEQS) == list(range(1, CHUNKS + 1))
            items = [li.text for li in driver.find_elements("css selector", "#chunks li")]
            assert items == [f"{i} of {CHUNKS}" for i in range(1, CHUNKS + 1)]
            wait_until(lambda: driver.find_element("id", "state").text == "SUCCESS",
                       timeout=30, message="the polled state SUCCESS")
            screenshot(driver, "webapp")
            final = json.loads(driver.find_element("id", "result").text)
        assert final["count"] == CHUNKS
        assert_served_by(handle, final)
    finally:
        proxy.close()
        terminate(web, 15)
