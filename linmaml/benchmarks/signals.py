"""SIGINT and SIGTERM as a flag that a training run polls, so that it can stop cleanly.

The run looks at :attr:`StopSignals.received` between iterations *and* between the chunks of a
validation pass (a pass can take minutes; a scheduler's grace period is often 10–30 s), writes what
is complete, and exits with ``128 + signal`` (130 for SIGINT, 143 for SIGTERM). The first signal
restores the previous handlers, so a second one acts at once, as it would without us.
"""
from __future__ import annotations

import signal
import threading

#: The signals a run answers by checkpointing and stopping.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """``with StopSignals() as stop: … if stop.received: …``. Outside the main thread (where Python
    cannot install handlers) it installs nothing and ``received`` stays None."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum
        self._restore()

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc):
        self._restore()

    @staticmethod
    def name(signum: int) -> str:
        """``"SIGTERM"`` for 15, and so on."""
        return signal.Signals(signum).name
