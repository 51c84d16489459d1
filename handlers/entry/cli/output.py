"""Terminal output: aligned columns, colour only on a terminal, control characters escaped, progress on stderr."""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

_COLOURS = {"green": "32", "red": "31", "yellow": "33", "cyan": "36", "dim": "2", "bold": "1"}
_STATE_COLOURS = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "LAUNCH_FAILED": "red",
    "TIMED_OUT": "red",
    "CANCELLED": "yellow",
    "RUNNING": "cyan",
    "PENDING": "cyan",
    "CLAIMED": "dim",
}


def clean(text: Any) -> str:
    """``text`` safe for one terminal line: control and format characters (newlines, escape
    sequences, bidi overrides) are shown as escapes instead of acting on the terminal."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(ch)
            out.append(
                {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch)
                or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
            )
        else:
            out.append(ch)
    return "".join(out)


class Output:
    """Where a command writes: JSON or human text on stdout, progress and notes on stderr."""

    def __init__(self, *, as_json: bool, stdout: TextIO, stderr: TextIO, colour: bool) -> None:
        self.json = as_json
        self.stdout = stdout
        self.stderr = stderr
        self.colour = colour

    def emit(self, doc: Any) -> None:
        self.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")

    def line(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def note(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def paint(self, text: str, colour: str | None) -> str:
        if not self.colour or not colour:
            return text
        return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m"

    def state(self, state: str, width: int = 0) -> str:
        return self.paint(state.ljust(width), _STATE_COLOURS.get(state))

    def table(
        self, headers: Sequence[str], rows: Sequence[Sequence[str]], colours: Sequence[str | None]
    ) -> None:
        """Aligned columns (the last one is not padded); ``colours`` names a colour per column."""
        cells = [[clean(c) for c in row] for row in rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        last = len(headers) - 1
        self.line(
            "  ".join(
                self.paint(h if i == last else h.ljust(widths[i]), "bold") for i, h in enumerate(headers)
            )
        )
        for row in cells:
            parts = []
            for i, c in enumerate(row):
                padded = c if i == last else c.ljust(widths[i])
                colour = _STATE_COLOURS.get(c) if colours[i] == "state" else colours[i]
                parts.append(self.paint(padded, colour))
            self.line("  ".join(parts).rstrip())

    def pairs(self, items: Iterable[tuple[str, Any]], indent: int = 0) -> None:
        """``key  value`` lines with the values aligned."""
        items = list(items)
        if not items:
            return
        width = max(len(k) for k, _ in items)
        for key, value in items:
            self.line(" " * indent + f"{key.ljust(width)}  {clean(value)}")


class Progress:
    """A progress line on stderr: rewritten in place on a terminal, else at most once a second."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = _isatty(stream)
        self._last = 0.0
        self._shown = False

    def update(self, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
        elif force or now - self._last >= 1.0:
            self.stream.write(text + "\n")
        else:
            return
        self._last = now
        self._shown = True
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()


def bar(done: int, total: int, elapsed: float, width: int = 24) -> str:
    """``[#########...............] 1,234/10,000 12% 45/s 3m12s left``: a progress bar with its
    rate and the time left at that rate."""
    total = max(total, 1)
    share = min(done / total, 1.0)
    filled = int(share * width)
    rate = done / elapsed if elapsed > 0 else 0.0
    left = ""
    if 0 < done < total and rate > 0:
        seconds = int((total - done) / rate)
        left = f" {seconds // 60}m{seconds % 60:02d}s left" if seconds >= 60 else f" {seconds}s left"
    return f"[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} {share:.0%} {rate:.0f}/s{left}"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
