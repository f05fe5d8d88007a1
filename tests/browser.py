"""Headless Chromium driven over the DevTools protocol, for the tests that look at pages (Prefect UI, reports)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")

CLICK_BY_TEXT = """(text => {
  const hits = [...document.querySelectorAll('*')].filter(e => !e.children.length && e.textContent.trim() === text);
  const el = hits.map(e => e.closest('a, button, [role=tab]') || e).pop();
  if (el) el.click();
  return Boolean(el);
})(%s)"""


class Chromium:
    """Headless Chromium driven through the DevTools protocol (the `websockets` client that Prefect installs)."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000) -> None:
        from websockets.sync.client import connect

        args = [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-breakpad",
            f"--user-data-dir={profile}", "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank",
        ]  # fmt: skip
        profile.mkdir(parents=True)
        self.log = profile.parent / "chromium.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.ws = connect(self._page_socket(profile / "DevToolsActivePort"), max_size=None, open_timeout=30)
        except BaseException:
            self.close()
            raise
        self._ids = itertools.count(1)

    def _page_socket(self, port_file: Path, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if port_file.exists() and port_file.read_text().strip():
                port = int(port_file.read_text().split()[0])
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                        pages = [t for t in json.load(r) if t["type"] == "page"]
                    if pages:
                        return pages[0]["webSocketDebuggerUrl"]
                except OSError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"chromium did not open its DevTools port:\n{self.log.read_text(errors='replace')[-3000:]}")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, js: str) -> Any:
        return self.send("Runtime.evaluate", expression=js, returnByValue=True)["result"].get("value")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def wait_for_text(self, *needles: str, timeout: float = 60) -> str:
        """The page's visible text once it holds every needle (the UI renders from API calls after load)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.evaluate("document.body ? document.body.innerText : ''") or ""
            if all(n in text for n in needles):
                return text
            if time.monotonic() > deadline:
                missing = [n for n in needles if n not in text]
                raise AssertionError(f"the page never showed {missing}; it shows:\n{text[:3000]}")
            time.sleep(0.3)

    def click_text(self, text: str) -> None:
        assert self.evaluate(CLICK_BY_TEXT % json.dumps(text)), f"nothing to click labelled {text!r}"

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        """Close the browser the polite way (DevTools), then make sure it is gone."""
        with contextlib.suppress(Exception):
            if getattr(self, "ws", None):
                with contextlib.suppress(Exception):
                    self.send("Browser.close")
                self.ws.close()
            self.proc.wait(15)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(15)
