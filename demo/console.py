"""What the demo prints: steps with the time they took, progress lines, sections.

On a terminal, progress rewrites one line and headings are bold; otherwise (a pipe,
a test capturing the output) every progress change worth showing is its own line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Console:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._progress = ""  # the progress line shown last (tty: still on screen)
        self._progress_at = 0.0

    def _write(self, text: str) -> None:
        self._end_progress()
        self.stream.write(text + "\n")
        self.stream.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _bold(self, text: str) -> str:
        return f"\033[1m{text}\033[0m" if self.tty else text

    def heading(self, text: str) -> None:
        self._write("")
        self._write(self._bold(f"== {text} =="))

    def step(self, text: str) -> None:
        """One thing done (or being done), stamped with the seconds since the start."""
        self._write(f"[{self.elapsed():5.1f}s] {text}")

    def line(self, text: str = "") -> None:
        self._write(text)

    def block(self, text: str, indent: str = "    ") -> None:
        for line in text.rstrip("\n").splitlines() or [""]:
            self._write(indent + line if line else "")

    def progress(self, text: str, *, every: float = 2.0) -> None:
        """A progress line: rewritten in place on a terminal; elsewhere printed when it
        changed and ``every`` seconds passed since the last one printed."""
        stamped = f"[{self.elapsed():5.1f}s] {text}"
        if self.tty:
            self.stream.write("\r\033[K" + stamped)
            self.stream.flush()
            self._progress = stamped
            return
        now = time.monotonic()
        if text != self._progress and now - self._progress_at >= every:
            self.stream.write(stamped + "\n")
            self.stream.flush()
            self._progress, self._progress_at = text, now

    def done(self, text: str) -> None:
        """The final state of a progress line, always printed."""
        self._end_progress()
        self.step(text)

    def _end_progress(self) -> None:
        if self.tty and self._progress:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self._progress = ""
        self._progress_at = 0.0
