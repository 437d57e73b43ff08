"""Incremental detokenization with stop strings: which text of a growing token list may be sent now.

Pure Python over a ``decode(ids) -> str`` function, so it is tested without a model. Text is held
back while it could still be the start of a stop string, and while it ends in an incomplete UTF-8
sequence (decoded as U+FFFD); ``finish`` releases what is held when generation ends.
"""

from __future__ import annotations

from collections.abc import Callable

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feeds tokens one at a time; returns the new text that is safe to emit."""

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...] = (),
                 include_stop: bool = False) -> None:
        self._decode = decode
        self.stop = tuple(s for s in stop if s)
        self.include_stop = include_stop
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already returned
        self.text = ""
        self._hold = max((len(s) for s in self.stop), default=1) - 1

    def add(self, token: int) -> tuple[str, bool]:
        """Append ``token``; returns ``(text to emit, stopped)``.

        When a stop string appears, the text before it is returned with ``stopped=True``; the stop
        string itself is emitted only with ``include_stop``.
        """
        self.ids.append(token)
        self.text = text = self._decode(self.ids)
        for s in self.stop:
            pos = text.find(s, max(0, self.emitted - len(s)))
            if pos != -1:
                chunk = text[self.emitted:pos + (len(s) if self.include_stop else 0)]
                self.emitted = len(text)
                return chunk, True
        safe = len(text) - self._hold
        end = len(text)
        while end > self.emitted and text[end - 1] == _REPLACEMENT:  # an incomplete multi-byte character
            end -= 1
        safe = min(safe, end)
        if safe > self.emitted:
            chunk, self.emitted = text[self.emitted:safe], safe
            return chunk, False
        return "", False

    def finish(self) -> str:
        """The held-back rest of the text (generation ended without a stop string)."""
        chunk = self.text[self.emitted:]
        self.emitted = len(self.text)
        return chunk
