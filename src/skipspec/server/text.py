"""From a growing list of token ids to text pieces: whole characters only, cut at stop strings.

Both pieces are pure (a tokenizer's `decode` is their only dependency) and serve streamed and
non-streamed responses alike, so the two can only ever produce the same text.
"""

from __future__ import annotations

from collections.abc import Sequence

# What a decoder shows for bytes that do not form a whole character yet.
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Hands out the text of a growing token list piece by piece, never half a character.

    Each call decodes a short window: `tokens[prefix:read]` (text already handed out, kept as
    context so that tokenizers which drop a leading space or merge bytes across tokens decode as
    they would inside the whole text) and `tokens[prefix:]`; the difference is the new text. While
    it ends in U+FFFD the last tokens hold part of a multi-byte character and nothing is handed out.
    The pieces plus `flush()` join to `tokenizer.decode(tokens)`.

    >>> class Bytes:  # a byte-level tokenizer: token i is byte i
    ...     def decode(self, ids, skip_special_tokens=True):
    ...         return bytes(ids).decode("utf-8", errors="replace")
    >>> d = IncrementalDetokenizer(Bytes())
    >>> [d.add(b) for b in "é!".encode()]  # é is two bytes: nothing until both are in
    ['', 'é', '!']
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self.tokens: list[int] = []
        self._prefix = 0  # start of the context window
        self._read = 0  # tokens before this index have been handed out as text

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=self._skip)

    def add(self, token: int) -> str:
        """Append one token; return the text it completes (possibly '')."""
        self.tokens.append(int(token))
        before = self._decode(self.tokens[self._prefix : self._read])
        now = self._decode(self.tokens[self._prefix :])
        if len(now) <= len(before) or now.endswith(_REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self.tokens)
        return now[len(before) :]

    def flush(self) -> str:
        """The text still held back (an unfinished character shows as U+FFFD, as `decode` shows it)."""
        before = self._decode(self.tokens[self._prefix : self._read])
        now = self._decode(self.tokens[self._prefix :])
        self._prefix = self._read = len(self.tokens)
        return now[len(before) :]


class StopMatcher:
    """Cuts streamed text at the first stop string, which is left out (OpenAI's rule).

    Text that could still become the start of a stop string is held back until the next piece
    shows whether it does, so a stop string split across pieces is cut as exactly as one that
    arrives whole.

    >>> m = StopMatcher(("END",))
    >>> m.feed("one two E")
    ('one two ', False)
    >>> m.feed("N")
    ('', False)
    >>> m.feed("D three")
    ('', True)
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        self.stops = tuple(stops)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        """-> (text safe to hand out, whether a stop string was found). After a stop, hands out nothing."""
        if self.stopped:
            return "", True
        buf = self._held + text
        first = _first_match(buf, self.stops)
        # Where an unfinished stop string may begin: a match found after it is not the first yet.
        open_at = len(buf) - _longest_stop_prefix_suffix(buf, self.stops)
        if first is not None and first <= open_at:
            self._held = ""
            self.stopped = True
            return buf[:first], True
        self._held = buf[open_at:]
        return buf[:open_at], False

    def flush(self) -> tuple[str, bool]:
        """At the end of generation: the held-back tail, cut at a stop string it holds (no more text
        can come to finish an earlier one)."""
        held, self._held = self._held, ""
        if self.stopped:
            return "", True
        first = _first_match(held, self.stops)
        self.stopped = first is not None
        return (held if first is None else held[:first]), self.stopped


def _first_match(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _longest_stop_prefix_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is a proper prefix of some stop string.

    >>> _longest_stop_prefix_suffix("abc </st", ("</stop>", "xyz"))
    4
    """
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
