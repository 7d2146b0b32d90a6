"""A headless Chromium driven over the DevTools protocol, for the viewer's test and benchmark (no Selenium, no
Playwright: the browser's own websocket endpoint, through aiohttp, which Ray already installs).

    exe = find_chromium()
    async with Browser(exe, profile_dir) as b:
        await b.send("Page.navigate", session=True, url=path.as_uri())
        await b.wait_for("document.body.dataset.ready")
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-port=0"]


def find_chromium() -> str | None:
    """Debian's chromium (or another Chromium/Chrome on the PATH), or ``$DOCRERANK_CHROMIUM``."""
    for name in (os.environ.get("DOCRERANK_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Browser:
    """A headless Chromium driven over the DevTools protocol (one page), with aiohttp's websocket client."""

    def __init__(self, exe: str, profile: Path, width: int = 1400, height: int = 1800):
        self.proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ws_url = None
        for line in self.proc.stderr:
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                self.ws_url = m.group(1)
                break
        if not self.ws_url:
            raise RuntimeError(f"chromium did not start (exit {self.proc.poll()})")
        # keep reading its log, so that a chatty browser never blocks on a full pipe
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        self.n = 0
        self.size = (width, height)

    async def __aenter__(self):
        import aiohttp

        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.ws_url, max_msg_size=0)
        target = await self.send("Target.createTarget", url="about:blank")
        self.session = (await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True))["sessionId"]
        await self.send("Emulation.setDeviceMetricsOverride", session=True, width=self.size[0], height=self.size[1],
                        deviceScaleFactor=1, mobile=False)
        return self

    async def __aexit__(self, *exc):
        await self.ws.close()
        await self.http.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)

    async def send(self, method: str, session: bool = False, **params):
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        await self.ws.send_json(msg)
        while True:
            reply = await asyncio.wait_for(self.ws.receive_json(), timeout=60)
            if reply.get("id") == self.n:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def js(self, expression: str):
        r = await self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30):
        for _ in range(int(timeout * 10)):
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise TimeoutError(expression)
