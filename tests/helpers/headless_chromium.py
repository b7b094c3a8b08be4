"""Drive Debian's `chromium` headless over the DevTools protocol, to check what a web UI shows.

No Playwright/Selenium: they download their own browsers from a CDN, and CI is offline except
for the package registries; the Makefile installs Debian's `chromium` instead. The only Python
dependency is `websockets`, which comes with Prefect.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

BINARIES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")


def find_chromium() -> str | None:
    """The first Chromium-family browser on PATH (`MEDFLOW_CHROMIUM` overrides), or None."""
    override = os.environ.get("MEDFLOW_CHROMIUM")
    if override:
        return override
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


class HeadlessChromium:
    """One headless browser tab: navigate, wait for text, click, read text, screenshot."""

    def __init__(self, binary: str, profile_dir: Path, window: tuple[int, int] = (1600, 1200)):
        self.binary, self.profile_dir, self.window = binary, profile_dir, window
        self._ids = itertools.count(1)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: Any = None

    def __enter__(self) -> HeadlessChromium:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.profile_dir / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        # --no-sandbox: CI may run as root, where Chromium's sandbox refuses to start
        cmd = [
            self.binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile_dir}",
            f"--window-size={self.window[0]},{self.window[1]}",
            "about:blank",
        ]
        log = (self.profile_dir / "chromium.log").open("wb")
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(
                    f"{self.binary} did not open its DevTools port within 30 s; "
                    f"see {self.profile_dir / 'chromium.log'}"
                )
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            pages = [t for t in json.load(resp) if t["type"] == "page"]
        self._ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.send("Page.enable")
        self.send("Runtime.enable")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are dropped."""
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._ws.recv(timeout=30))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def text(self) -> str:
        """The page's visible text, as a user would read it."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *needles: str, timeout: float = 30) -> str:
        """Poll the rendered text until every needle shows; fail with what the page shows."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            missing = [n for n in needles if n not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"after {timeout:.0f} s the page lacks {missing}; it shows:\n{text[:3000]}"
                )
            time.sleep(0.25)

    def click_text(self, label: str) -> None:
        """Click the innermost visible element whose text is exactly `label` (a tab, a link)."""
        clicked = self.evaluate(
            "(() => {"
            "  const hits = [...document.querySelectorAll('button, a, [role=tab], li, span, div')]"
            "    .filter(e => e.offsetParent !== null"
            f"             && e.innerText.trim() === {json.dumps(label)});"
            "  if (!hits.length) return false;"
            "  hits[hits.length - 1].click(); return true;"
            "})()"
        )
        if not clicked:
            raise AssertionError(f"no visible element reads {label!r}; page:\n{self.text()[:3000]}")

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the whole page (written to a temp file, then renamed)."""
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(base64.b64decode(data["data"]))
        tmp.replace(path)
        return path
