"""A minimal W3C WebDriver client for ChromeDriver, standard library only.

``tools/check_site.py`` needs a handful of browser commands (open a page, run JavaScript, find
elements, click, type, screenshots, the browser console, one DevTools command). ChromeDriver
speaks the W3C WebDriver protocol, JSON over HTTP, so this module talks to it with ``urllib``
instead of depending on Selenium: the site check then needs only Debian's ``chromium`` and
``chromium-driver`` packages.

Protocol: https://www.w3.org/TR/webdriver2/ ; the two ChromeDriver extensions used are
``POST /session/{id}/se/log`` (browser console) and ``POST /session/{id}/goog/cdp/execute``.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"
"""The W3C key under which an element reference travels in JSON."""

KEYS = {"ARROW_LEFT": "\ue012", "ARROW_RIGHT": "\ue014"}


class WebDriverError(RuntimeError):
    """ChromeDriver answered a command with an error (its ``error`` and ``message``)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Element:
    """A reference to one DOM element of the current page."""

    def __init__(self, driver: Driver, element_id: str) -> None:
        self.driver = driver
        self.id = element_id

    def _url(self, tail: str) -> str:
        return f"/element/{self.id}/{tail}"

    def find_element(self, css: str) -> Element:
        value = self.driver.command("POST", self._url("element"),
                                    {"using": "css selector", "value": css})
        return Element(self.driver, value[ELEMENT_KEY])

    def click(self) -> None:
        self.driver.command("POST", self._url("click"), {})

    def send_keys(self, text: str) -> None:
        self.driver.command("POST", self._url("value"), {"text": text})

    def get_attribute(self, name: str) -> str | None:
        return self.driver.command("GET", self._url(f"attribute/{name}"))

    def screenshot(self, path: str) -> None:
        data = self.driver.command("GET", self._url("screenshot"))
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))


class Driver:
    """One ChromeDriver process and one browser session.

    ``args`` are Chromium's command-line flags; ``timeout`` (s) bounds page loads and scripts.
    Use as a context manager, or call :meth:`quit`.
    """

    def __init__(self, chromium: str, chromedriver: str, args: list[str], timeout: float) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [chromedriver, f"--port={self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        self.session: str | None = None
        self.http_timeout = timeout + 30
        try:
            self._wait_ready(20.0)
            caps = {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": list(args)},
                "goog:loggingPrefs": {"browser": "ALL"},
            }
            value = self._request("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
            self.session = value["sessionId"]
            ms = int(timeout * 1000)
            self.command("POST", "/timeouts", {"pageLoad": ms, "script": ms})
        except BaseException:
            self.quit()
            raise

    def _wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise WebDriverError(f"chromedriver exited with status {self.proc.returncode}")
            try:
                if self._request("GET", "/status").get("ready"):
                    return
            except (OSError, WebDriverError):
                pass
            time.sleep(0.1)
        raise WebDriverError(f"chromedriver did not become ready within {timeout:.0f} s")

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method,
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.http_timeout) as resp:
                payload = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read() or b"{}")
            except ValueError:
                raise WebDriverError(f"{method} {path}: HTTP {exc.code}") from exc
        value = payload.get("value")
        if isinstance(value, dict) and "error" in value:
            raise WebDriverError(f"{value['error']}: {str(value.get('message', ''))[:300]}")
        return value

    def command(self, method: str, tail: str, body: dict[str, Any] | None = None) -> Any:
        """Send a session command (``tail`` is the path after ``/session/{id}``)."""
        if self.session is None:
            raise WebDriverError("no browser session")
        return self._request(method, f"/session/{self.session}{tail}", body)

    # -- page and script -------------------------------------------------------------------
    def get(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    @staticmethod
    def _wrap(arg: Any) -> Any:
        return {ELEMENT_KEY: arg.id} if isinstance(arg, Element) else arg

    def _unwrap(self, value: Any) -> Any:
        if isinstance(value, dict):
            if ELEMENT_KEY in value and len(value) == 1:
                return Element(self, value[ELEMENT_KEY])
            return {k: self._unwrap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._unwrap(v) for v in value]
        return value

    def execute_script(self, script: str, *args: Any) -> Any:
        value = self.command("POST", "/execute/sync",
                             {"script": script, "args": [self._wrap(a) for a in args]})
        return self._unwrap(value)

    def execute_async_script(self, script: str, *args: Any) -> Any:
        value = self.command("POST", "/execute/async",
                             {"script": script, "args": [self._wrap(a) for a in args]})
        return self._unwrap(value)

    def find_elements(self, css: str) -> list[Element]:
        value = self.command("POST", "/elements", {"using": "css selector", "value": css})
        return [Element(self, v[ELEMENT_KEY]) for v in value]

    # -- screenshots, console, DevTools ------------------------------------------------------
    def save_screenshot(self, path: str) -> None:
        data = self.command("GET", "/screenshot")
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def get_log(self, kind: str = "browser") -> list[dict[str, Any]]:
        return self.command("POST", "/se/log", {"type": kind}) or []

    def execute_cdp_cmd(self, cmd: str, params: dict[str, Any]) -> Any:
        return self.command("POST", "/goog/cdp/execute", {"cmd": cmd, "params": params})

    def quit(self) -> None:
        try:
            if self.session is not None:
                self._request("DELETE", f"/session/{self.session}")
        except (OSError, WebDriverError):
            pass
        finally:
            self.session = None
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.quit()
