"""Pattern matching in guaranteed linear time: object-name globs and configured regular expressions.

Object names and message fields come from outside (an object name is up to 1,024 bytes of anything),
and Python's ``re`` backtracks: a pattern like ``(a|aa)*b`` or a glob turned into nested ``.*`` can
take seconds to minutes on a crafted name. So nothing here backtracks:

- :class:`Glob` matches ``*`` (within one path segment), ``**`` (across segments), ``**/`` (zero or
  more whole segments), ``?`` (one character but ``/``) and ``[...]`` / ``[!...]`` sets by simulating
  the pattern's automaton over the name: at most (pattern length + 1) states per character, so the
  work is linear in the name for a given pattern, however the name is made;
- :func:`compile_regex` compiles a configured regular expression with RE2 (the ``google-re2``
  package, imported only when a config uses a regex), whose matching is linear by design. A pattern
  RE2 cannot run that way (backreferences, lookaround) is refused at load, naming the construct.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Token kinds of a glob
_CHAR, _ANY, _STAR, _GLOBSTAR, _SEGMENTS, _SET = range(6)


class PatternError(ValueError):
    """A pattern that cannot be compiled (or cannot be matched in linear time)."""


@dataclass(frozen=True)
class _Token:
    kind: int
    char: str = ""
    ranges: tuple[tuple[str, str], ...] = ()
    negated: bool = False

    def takes(self, ch: str) -> bool:
        """Whether this single-character token consumes ``ch``."""
        if self.kind == _CHAR:
            return ch == self.char
        if self.kind == _ANY:
            return ch != "/"
        inside = any(lo <= ch <= hi for lo, hi in self.ranges)
        return inside != self.negated


def _parse_set(pattern: str, i: int) -> tuple[_Token, int] | None:
    """A ``[...]`` set starting at ``pattern[i]`` and the index after it; ``None``: a literal ``[``."""
    j = i + 1
    negated = j < len(pattern) and pattern[j] in "!^"
    if negated:
        j += 1
    start = j
    if j < len(pattern) and pattern[j] == "]":  # a leading ] is a member
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 1
    if j >= len(pattern):
        return None
    body, ranges, k = pattern[start:j], [], 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            lo, hi = body[k], body[k + 2]
            if lo > hi:
                raise PatternError(f"bad character range {lo}-{hi} in {pattern[i : j + 1]!r}")
            ranges.append((lo, hi))
            k += 3
        else:
            ranges.append((body[k], body[k]))
            k += 1
    return _Token(_SET, ranges=tuple(ranges), negated=negated), j + 1


def _tokens(pattern: str) -> tuple[_Token, ...]:
    out: list[_Token] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append(_Token(_SEGMENTS))
            i += 3
        elif pattern.startswith("**", i):
            out.append(_Token(_GLOBSTAR))
            i += 2
        elif pattern[i] == "*":
            out.append(_Token(_STAR))
            i += 1
        elif pattern[i] == "?":
            out.append(_Token(_ANY))
            i += 1
        elif pattern[i] == "[" and (found := _parse_set(pattern, i)) is not None:
            token, i = found
            out.append(token)
        else:
            out.append(_Token(_CHAR, char=pattern[i]))
            i += 1
    return tuple(out)


class Glob:
    """An object-name glob, matched against the whole name without backtracking."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._tokens = _tokens(pattern)
        self._accept = len(self._tokens)

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Glob) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def _closure(self, states: set[int]) -> set[int]:
        """Add the states reachable without consuming a character (a star may match nothing)."""
        stack = list(states)
        while stack:
            s = stack.pop()
            if (
                s < self._accept
                and self._tokens[s].kind in (_STAR, _GLOBSTAR, _SEGMENTS)
                and s + 1 not in states
            ):
                states.add(s + 1)
                stack.append(s + 1)
        return states

    def match(self, name: str) -> bool:
        """Whether the whole of ``name`` matches. Work: O(len(name) x len(pattern)) at most."""
        tokens = self._tokens
        states = self._closure({0})
        # ``**/`` consumes whole segments: inside one it is in a "mid-segment" state, kept apart
        mid: set[int] = set()  # indices of _SEGMENTS tokens currently inside a segment
        for ch in name:
            nxt: set[int] = set()
            nxt_mid: set[int] = set()
            for s in states:
                if s == self._accept:
                    continue
                t = tokens[s]
                if t.kind == _STAR:
                    if ch != "/":
                        nxt.add(s)
                elif t.kind == _GLOBSTAR:
                    nxt.add(s)
                elif t.kind == _SEGMENTS:
                    if ch == "/":
                        nxt.add(s)  # an empty segment ("a//b") is a segment too
                    else:
                        nxt_mid.add(s)
                elif t.takes(ch):
                    nxt.add(s + 1)
            for s in mid:  # inside a segment of **/: continue it, or end it with its "/"
                if ch == "/":
                    nxt.add(s)
                else:
                    nxt_mid.add(s)
            states, mid = self._closure(nxt), nxt_mid
            if not states and not mid:
                return False
        return self._accept in states


@dataclass(frozen=True)
class Regex:
    """A configured regular expression, compiled for linear-time matching (RE2)."""

    pattern: str
    search: Callable[[str], Any]
    fullmatch: Callable[[str], Any]

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


@functools.cache
def _re2() -> Any:
    try:
        import re2  # google-re2: imported only when a config uses a regex
    except ImportError as exc:  # pragma: no cover - it is a runtime requirement
        raise PatternError("regular expressions need the google-re2 package (requirements.txt)") from exc
    return re2


def compile_regex(pattern: str) -> Regex:
    """Compile ``pattern`` with RE2 (``.`` also matches a newline, as names may hold one)."""
    re2 = _re2()
    options = re2.Options()
    options.dot_nl = True
    options.log_errors = False
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:  # its message names the construct RE2 refused
        why = exc.args[0] if exc.args else exc
        why = why.decode("utf-8", "replace") if isinstance(why, bytes) else str(why)
        raise PatternError(f"invalid, or not matchable in linear time (RE2): {why}") from exc
    return Regex(pattern, compiled.search, compiled.fullmatch)
