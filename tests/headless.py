"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``):
open a page, run a script in it (click what needs clicking), then take a screenshot. No
websocket client or browser-automation package is needed: the protocol's messages are JSON
separated by NUL bytes on file descriptors 3 (to the browser) and 4 (from it)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


class _Pipe:
    def __init__(self, proc: subprocess.Popen[bytes], to_browser: int, from_browser: int):
        self.proc, self.out, self.inp = proc, to_browser, from_browser
        self.buffer = b""
        self.next_id = 0

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.out, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.inp, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
                self.buffer += chunk
            raw, _, self.buffer = self.buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})


def screenshot(
    url: str,
    out: Path,
    script: str = "",
    check: str = "",
    wait: float = 10.0,
    size: tuple[int, int] = (1600, 1000),
) -> tuple[str, str]:
    """Open ``url``, wait ``wait`` seconds, run ``script`` (JavaScript), wait for the page to
    settle, evaluate ``check`` and save a PNG screenshot to ``out``.

    Returns:
        The values of ``script`` and ``check``, as strings.
    """
    profile = tempfile.mkdtemp(prefix="hpo-chromium-")
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()

    def fds() -> None:  # the child's fd 3 reads commands, fd 4 writes replies
        a, b = os.dup(to_r), os.dup(from_w)
        os.dup2(a, 3)
        os.dup2(b, 4)

    proc = subprocess.Popen(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        preexec_fn=fds,
        pass_fds=(3, 4),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(to_r)
    os.close(from_w)
    try:
        pipe = _Pipe(proc, to_w, from_r)
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        width, height = size
        pipe.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        pipe.call("Page.navigate", {"url": url}, session)
        time.sleep(wait)

        def evaluate(expression: str) -> str:
            if not expression:
                return ""
            result = pipe.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
            return str(result.get("result", {}).get("value", ""))

        value = evaluate(script)
        if script:
            time.sleep(wait / 2)
        checked = evaluate(check)
        shot = pipe.call("Page.captureScreenshot", {"format": "png"}, session)
        out.write_bytes(base64.b64decode(shot["data"]))
        return value, checked
    finally:
        proc.kill()
        proc.wait(timeout=30)
        os.close(to_w)
        os.close(from_r)
        shutil.rmtree(profile, ignore_errors=True)
