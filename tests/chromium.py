"""Drive a headless Chromium over the DevTools protocol, for the web demo's test and benchmark.

Chromium's `--remote-debugging-pipe` speaks the protocol as NUL-terminated JSON on file descriptors 3 (to
the browser) and 4 (from it), so this needs no WebSocket client and no browser download: it runs the
system's Chromium (Debian's `chromium` package).
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any

from toolkit.errors import ConfigError, ToolkitError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserError(ToolkitError):
    """Chromium failed, or a script in the page did."""


def find_chromium() -> str | None:
    """Path of the system's Chromium ($CHROMIUM overrides), or None."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


def chromium_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def _above_9(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Chromium:
    """One headless Chromium with one page: `with Chromium() as page: page.goto(url); page.evaluate(js)`."""

    def __init__(self, binary: str | None = None, *, width: int = 900, height: int = 640) -> None:
        self.binary = binary or find_chromium()
        if not self.binary:
            raise ConfigError("Chromium is not installed (Debian: apt-get install chromium), or set $CHROMIUM")
        self.size = (width, height)
        self._ids = itertools.count(1)
        self._replies: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.console: list[str] = []  # console messages and uncaught exceptions, for error reports

    def __enter__(self) -> Chromium:
        self._profile = tempfile.TemporaryDirectory(prefix="toolkit-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # above fd 9, so that moving them onto 3 and 4 below cannot clobber one another
        to_browser_r, from_browser_w = _above_9(to_browser_r), _above_9(from_browser_w)
        args = ["--headless=new", "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-gpu",
                "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--mute-audio", "--hide-scrollbars", "about:blank"]
        if os.geteuid() == 0:
            args.insert(0, "--no-sandbox")  # Chromium refuses to run its sandbox as root
        # bash (dash takes no fd above 9) puts the two pipe ends where Chromium expects them: fd 3 (commands in),
        # fd 4 (replies out)
        redirect = f"3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-"
        self._process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" {redirect}', self.binary, *args],
            pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for method in ("Page.enable", "Runtime.enable"):
                self.call(method)
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": self.size[0], "height": self.size[1], "deviceScaleFactor": 1, "mobile": False})
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._to_browser)
        self._profile.cleanup()

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 20):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    self._dispatch(json.loads(raw))
        with self._lock:  # the browser is gone: wake every waiting call
            for waiting in self._replies.values():
                waiting.put({"error": {"message": "Chromium exited"}})

    def _dispatch(self, message: dict) -> None:
        if "id" in message:
            with self._lock:
                waiting = self._replies.get(message["id"])
            if waiting:
                waiting.put(message)
        elif message.get("method") == "Runtime.consoleAPICalled":
            args = message["params"].get("args", [])
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif message.get("method") == "Runtime.exceptionThrown":
            details = message["params"]["exceptionDetails"]
            self.console.append(details.get("exception", {}).get("description") or details.get("text", ""))

    def send(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float = 60) -> dict:
        """One protocol command; its result, or BrowserError with the protocol's message."""
        ident = next(self._ids)
        reply: queue.Queue = queue.Queue()
        with self._lock:
            self._replies[ident] = reply
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
            answer = reply.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"Chromium did not answer {method} within {timeout:.0f} s") from None
        except OSError as e:
            raise BrowserError(f"Chromium exited: {self._stderr_tail()} ({e})") from None
        finally:
            with self._lock:
                del self._replies[ident]
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message')} {self._stderr_tail()}".strip())
        return answer.get("result", {})

    def _stderr_tail(self) -> str:
        if self._process.poll() is None:
            return ""
        return self._process.stderr.read().decode(errors="replace")[-500:]

    def call(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        """A protocol command for the page."""
        return self.send(method, params, session=self.session, timeout=timeout)

    def evaluate(self, expression: str, timeout: float = 60) -> Any:
        """Run JavaScript in the page (promises awaited) and return its JSON-able value."""
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True, "timeout": int(timeout * 1000)},
                           timeout=timeout + 5)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"script failed in the page: {text}")
        return result["result"].get("value")

    def goto(self, url: str, ready: str = "document.readyState === 'complete'", timeout: float = 60) -> None:
        """Open `url` and wait until the JavaScript condition `ready` is true."""
        self.call("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"!!({ready})"):
            if time.monotonic() > deadline:
                raise BrowserError(f"{url}: not ready after {timeout:.0f} s ({ready}); page said: "
                                   f"{' | '.join(self.console[-5:])}")
            time.sleep(0.05)

    def pointer(self, kind: str, x: float, y: float, pointer_type: str = "mouse") -> None:
        """A synthetic press/move/release at page coordinates (x, y): mouse or touch."""
        if pointer_type == "touch":
            event = {"down": "touchStart", "move": "touchMove", "up": "touchEnd"}[kind]
            points = [] if kind == "up" else [{"x": x, "y": y}]
            self.call("Input.dispatchTouchEvent", {"type": event, "touchPoints": points})
        else:
            event = {"down": "mousePressed", "move": "mouseMoved", "up": "mouseReleased"}[kind]
            self.call("Input.dispatchMouseEvent", {"type": event, "x": x, "y": y, "button": "left",
                                                   "buttons": 0 if kind == "up" else 1, "clickCount": 1})

    def screenshot(self) -> bytes:
        """The page as PNG bytes."""
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])
