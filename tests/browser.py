"""Headless Chromium for the browser tests (Debian's chromium + chromium-driver, selenium).

``.ci/install-browser`` (run by ``make test`` and ``.ci/run``) installs them. Where they are
missing, a test that needs them fails in CI (``CI=true``) and is skipped elsewhere.
Screenshots go to ``tests/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TESTS, ProcessTracker, terminate, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = TESTS / "artifacts"


def require_browser() -> None:
    """Fail (CI) or skip (elsewhere) unless chromium and chromedriver are installed."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return
    message = (f"browser test needs {' and '.join(missing)}: run `make browser` "
               "(apt-get install chromium chromium-driver, as root)")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def chrome(pids: ProcessTracker, headers: dict[str, str] | None = None) -> Iterator[Any]:
    """A headless Chromium driven by the system chromedriver; quit (and its processes
    checked gone by ``pids``) at exit. ``headers`` are sent with every request (CDP)."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    service = Service(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    pids.track(service.process.pid)
    try:
        driver.set_page_load_timeout(60)
        if headers:
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})
        yield driver
    finally:
        pids.sample()
        driver.quit()


def basic_auth(user: str, password: str) -> dict[str, str]:
    """The Authorization header of HTTP basic auth."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def screenshot(driver: Any, name: str) -> Path:
    """Save the page as ``tests/artifacts/<name>.png``; returns the path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def page_text(driver: Any) -> str:
    """The visible text of the page's body ('' while there is none)."""
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.TAG_NAME, "body").text)
    except Exception:
        return ""


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[
    int, bytes
]:
    """(status, body) of a GET; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(url: str, proc: subprocess.Popen[Any], log: Path, timeout: float = 60) -> None:
    """Wait until ``url`` answers (any status below 500) while ``proc`` runs."""

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return http_get(url, timeout=2)[0] < 500
        except OSError:
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if up():
                return
        except AssertionError:
            raise
        time.sleep(0.2)
    terminate(proc, 10)
    raise AssertionError(f"{url} did not answer within {timeout}s:\n{log.read_text()}")


__all__ = ["ARTIFACTS", "basic_auth", "chrome", "http_get", "page_text", "require_browser",
           "screenshot", "wait_http", "wait_until"]


class DroppingProxy:
    """A TCP proxy on a free loopback port in front of ``target_port`` whose open
    connections a test can cut at once (:meth:`drop`), as a network outage would."""

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.dropped = 0
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: Any, sink: Any) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source)
            self._close(sink)

    def _close(self, sock: Any) -> None:
        import socket

        with self._lock:
            self._open.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def drop(self) -> int:
        """Cut every open connection; returns how many there were."""
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            self._close(sock)
        self.dropped += len(sockets)
        return len(sockets)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.drop()
