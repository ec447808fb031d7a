"""``merge_text``: the ``merge`` for token streams, in linear time and bounded memory.

Called as ``merge_text(older, newer)`` it is what it always was: the newer chunk carrying both
texts. But a client that stops reading makes its stream buffer merge every later token into the
same chunk, and concatenating there copies the whole text each time: 20,000 tokens of 1 KiB cost
~200 GB of copying and held the worker's event loop (and its other clients) for over 30 s. So the
buffer folds with a ``TextFold`` instead: each token's text is appended to a list once, joined once
when the reader takes the chunk, and the fold refuses a token past ``max_chars``, which ends the
stream with ``StreamOverflowError`` as an unmerged stream's full buffer does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_MAX_CHARS = 16 << 20


class TextMerge:
    """A ``merge`` for chunks with a ``text`` field (dataclasses): the newer chunk carrying both
    texts, with the newer chunk's other fields, ``is_final`` included. A stream merging with it
    ends with ``StreamOverflowError`` once one merged chunk would hold more than ``max_chars``
    characters of text (bytes, for ``bytes`` texts) that its client has not read."""

    __slots__ = ("max_chars",)

    def __init__(self, max_chars: int = DEFAULT_MAX_CHARS) -> None:
        # bool is an int subclass; TextMerge(True) is a bug.
        if type(max_chars) is not int or max_chars < 1:
            raise ValueError(f"max_chars must be a positive int, got {max_chars!r}")
        self.max_chars = max_chars

    def __call__(self, older: T, newer: T) -> T:
        return dataclasses.replace(newer, text=older.text + newer.text)  # type: ignore[attr-defined,type-var]

    def fold(self, older: Any) -> TextFold:
        """A chunk being merged into, for a stream buffer: ``add`` the newer chunks, ``result()``."""
        return TextFold(older, self.max_chars)

    def __repr__(self) -> str:
        return f"TextMerge(max_chars={self.max_chars})"


class TextFold:
    """Chunks merged into one, kept as the list of their texts until the reader takes it."""

    __slots__ = ("_latest", "_parts", "chars", "max_chars")

    def __init__(self, first: Any, max_chars: int) -> None:
        text = _text_of(first)
        self._parts: list[str | bytes] = [text]
        self._latest = first
        self.chars = len(text)
        self.max_chars = max_chars

    def add(self, newer: Any) -> bool:
        """Folds ``newer`` in; False (and nothing kept) when that would pass ``max_chars``."""
        text = _text_of(newer)
        if type(text) is not type(self._parts[0]):
            raise TypeError(f"cannot merge a {type(text).__name__} text into a {type(self._parts[0]).__name__} one")
        if self.chars + len(text) > self.max_chars:
            return False
        self._parts.append(text)
        self._latest = newer
        self.chars += len(text)
        return True

    def result(self) -> Any:
        text = self._parts[0][:0].join(self._parts)  # type: ignore[arg-type]  # all str or all bytes (add)
        return dataclasses.replace(self._latest, text=text)


def _text_of(chunk: Any) -> str | bytes:
    # What `older.text + newer.text` and dataclasses.replace would refuse, refused at the merge.
    if not dataclasses.is_dataclass(chunk) or isinstance(chunk, type):
        raise TypeError(f"merge_text merges dataclass chunks, got {type(chunk).__name__}")
    text = getattr(chunk, "text", None)
    if not isinstance(text, str | bytes):
        raise TypeError(f"merge_text merges str or bytes texts, got {type(text).__name__}")
    return text


merge_text = TextMerge()
