"""A daemon thread a ``with`` block runs and stops: the trial heartbeat and the stale-trial sweep."""

from __future__ import annotations

import threading
from typing import Any


class Periodic:
    """Runs :meth:`_run` on a daemon thread named ``name`` inside a ``with`` block, when
    ``interval`` is set (no heartbeat interval: no thread). :meth:`_run` waits on ``_stop``
    between rounds and returns once it is set; leaving the block sets it and joins the thread.
    """

    def __init__(self, interval: float | None, name: str):
        self.interval = interval
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Any:
        if self.interval:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        raise NotImplementedError
