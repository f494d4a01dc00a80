# Finds user stop strings in streamed text. A stop string can arrive split over several deltas,
# so text that might be its beginning is held back until it is known not to be one.
from __future__ import annotations

from collections.abc import Iterable


class StopStringMatcher:
    """Filters a stream of text deltas, cutting it just before the first stop string.

    The stop that completes first in the stream wins (ties: the one that starts earliest), so
    the result does not depend on how the text was split into deltas.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self._stops: list[str] = list(dict.fromkeys(stops))
        for stop in self._stops:
            if not isinstance(stop, str) or stop == "":
                raise ValueError(f"stop strings must be non-empty strings, got {stop!r}")
        # Every proper prefix of a stop string: the suffixes of the text worth holding back.
        self._prefixes: frozenset[str] = frozenset(
            stop[:n] for stop in self._stops for n in range(1, len(stop))
        )
        self._longest_prefix = max((len(s) - 1 for s in self._stops), default=0)
        self._held = ""
        self._matched: str | None = None

    @property
    def stopped(self) -> bool:
        return self._matched is not None

    @property
    def matched(self) -> str | None:
        """The stop string that ended the text, or None."""
        return self._matched

    def push(self, delta: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop string was hit).

        After a hit, the stop string and everything after it are dropped; later pushes return
        ("", True).
        """
        if self._matched is not None:
            return "", True
        if not self._stops:
            return delta, False
        text = self._held + delta
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self._stops:
            start = text.find(stop)
            if start >= 0:
                candidate = (start + len(stop), start, stop)
                if best is None or candidate[:2] < best[:2]:
                    best = candidate
        if best is not None:
            _, start, stop = best
            self._matched = stop
            self._held = ""
            return text[:start], True
        keep = self._held_suffix_length(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """At the end of the stream: the held-back text (empty after a hit)."""
        held, self._held = self._held, ""
        return "" if self._matched is not None else held

    def _held_suffix_length(self, text: str) -> int:
        for n in range(min(len(text), self._longest_prefix), 0, -1):
            if text[-n:] in self._prefixes:
                return n
        return 0
