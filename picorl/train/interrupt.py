"""Ctrl-C during training: the first press asks for a checkpoint at the next safe point (the end of
the current update or SFT step) and a clean stop; a second press stops at once.

A safe point is where the model, optimizer and logs agree (between two updates), so the checkpoint
written there resumes exactly. Outside the main thread (where signals cannot be caught) Ctrl-C keeps
Python's default behaviour.
"""

from __future__ import annotations

import signal
import sys
import threading


class Interrupted(Exception):
    """The run stopped on Ctrl-C; the message says what was saved and how to continue."""


class StopRequest:
    """Context manager: while active, the first SIGINT sets :attr:`requested` instead of raising."""

    def __init__(self, notice: str) -> None:
        self.notice = notice
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{self.notice}", file=sys.stderr, flush=True)
