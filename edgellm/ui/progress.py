"""Download progress on stderr: a Rich bar on a terminal, plain lines every 10% in pipes and logs."""

from __future__ import annotations

import sys
import time
from typing import IO

from edgellm.ui.console import info, stderr
from edgellm.units import format_size


class TransferProgress:
    """Bytes, speed and ETA of one transfer, shown on stderr: a redrawn line on a terminal, a
    plain line every 10% otherwise (logs and CI)."""

    def __init__(self, label: str, total: int, initial: int = 0, stream: IO[str] | None = None) -> None:
        self.label, self.total, self.done = label, total, initial
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()
        self.started = time.monotonic()
        self.start_bytes = initial
        self.last_draw = 0.0
        self.next_step = (initial * 10 // max(total, 1) + 1) * 10
        if initial:
            self._line(f"resuming {label} at {format_size(initial)} of {format_size(total)}")

    def speed(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.done - self.start_bytes) / elapsed if elapsed > 0 else 0.0

    def describe(self) -> str:
        speed = self.speed()
        eta = (self.total - self.done) / speed if speed > 0 else None
        percent = self.done * 100 // max(self.total, 1)
        eta_text = f"ETA {int(eta) // 60}:{int(eta) % 60:02d}" if eta is not None else "ETA -"
        return f"{self.label}  {percent:3d}%  {format_size(self.done)} / {format_size(self.total)}  {format_size(speed)}/s  {eta_text}"

    def update(self, n_bytes: int) -> None:
        self.done += n_bytes
        now = time.monotonic()
        if self.terminal:
            if now - self.last_draw >= 0.1:
                self.last_draw = now
                width = 24
                filled = width * self.done // max(self.total, 1)
                bar = "#" * filled + "-" * (width - filled)
                self.stream.write(f"\r[{bar}] {self.describe()}\x1b[K")
                self.stream.flush()
        elif self.done * 100 // max(self.total, 1) >= self.next_step:
            self.next_step = (self.done * 100 // max(self.total, 1)) // 10 * 10 + 10
            self._line(self.describe())

    def reset(self, done: int) -> None:
        self.done = self.start_bytes = done
        self.started = time.monotonic()

    def close(self) -> None:
        if self.terminal:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        elapsed = time.monotonic() - self.started
        self._line(f"{self.label}: {format_size(self.done)} in {elapsed:.1f}s ({format_size(self.speed())}/s)")

    def _line(self, text: str) -> None:
        if self.terminal:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()


class DownloadProgress:
    """A Rich progress bar with size, speed and ETA on a terminal's stderr.

    Same interface as TransferProgress (the plain-line version used in pipes and logs).
    """

    def __init__(self, label: str, total: int, initial: int = 0) -> None:
        from rich.progress import (  # noqa: PLC0415  (only when a download starts)
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.label, self.total, self.done = label, total, initial
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=stderr, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(label, total=total, completed=initial)
        self._started_bytes = initial
        self._started = time.monotonic()
        if initial:
            info(f"resuming {label} at {format_size(initial)} of {format_size(total)}")

    def update(self, n_bytes: int) -> None:
        self.done += n_bytes
        self._progress.update(self._task, advance=n_bytes)

    def reset(self, done: int) -> None:
        self.done = self._started_bytes = done
        self._started = time.monotonic()
        self._progress.reset(self._task, total=self.total, completed=done)

    def close(self) -> None:
        self._progress.stop()
        elapsed = time.monotonic() - self._started
        speed = (self.done - self._started_bytes) / elapsed if elapsed > 0 else 0.0
        info(f"{self.label}: {format_size(self.done)} in {elapsed:.1f}s ({format_size(speed)}/s)")


def download_progress(label: str, total: int, initial: int = 0) -> DownloadProgress | TransferProgress:
    """A Rich bar on a terminal, plain lines every 10% otherwise (logs, CI, pipes)."""
    if sys.stderr.isatty():
        return DownloadProgress(label, total, initial)
    return TransferProgress(label, total, initial)
