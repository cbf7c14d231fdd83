"""``expect``: wait until a child's output matches one of some patterns, as pexpect does, async.

It reads through the stream's own read-ahead buffer: bytes past the match stay
there for the next ``receive()``, ``lines()`` or ``expect()``, and a timeout,
an unexpected EOF or a cancellation consumes nothing, so no byte is lost.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Final, final

import anyio
from anyio import EndOfStream

from ._streams import PipeReceiveStream

__all__ = ["EOF", "ExpectMatch", "ExpectTimeout", "UnexpectedEOF", "exact", "expect"]

_CHUNK = 65536


@final
class _EOFType:
    """The end of the output, as a pattern: ``expect(stream, [b"ok", EOF])``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "aioproc.EOF"

    def __reduce__(self) -> str:
        return "EOF"


EOF: Final = _EOFType()

Pattern = bytes | re.Pattern[bytes] | _EOFType


def exact(text: bytes) -> re.Pattern[bytes]:
    """A pattern that matches ``text`` literally (``expect`` takes bytes as regular expressions)."""
    if not isinstance(text, (bytes, bytearray, memoryview)):
        raise TypeError(f"exact() takes bytes, not {type(text).__name__}: {text!r}")
    return re.compile(re.escape(bytes(text)))


class ExpectMatch:
    """What :func:`expect` found.

    * ``index``: which of the patterns matched (their order in the list);
    * ``pattern``: that pattern (compiled), or :data:`EOF`;
    * ``match``: the ``re.Match``, or ``None`` for :data:`EOF`;
    * ``before``: the bytes read before the match (all that was left, for EOF);
    * ``after``: the bytes matched (``b""`` for EOF).
    """

    __slots__ = ("after", "before", "index", "match", "pattern")

    def __init__(
        self,
        index: int,
        pattern: re.Pattern[bytes] | _EOFType,
        match: re.Match[bytes] | None,
        before: bytes,
        after: bytes,
    ) -> None:
        self.index = index
        self.pattern = pattern
        self.match = match
        self.before = before
        self.after = after

    def __repr__(self) -> str:
        return f"<ExpectMatch index={self.index} before={self.before!r} after={self.after!r}>"

    def group(self, *groups: int | str) -> bytes | tuple[bytes | None, ...] | None:
        """``match.group(...)``; ``after`` itself when there is no match object (EOF)."""
        if self.match is None:
            if groups and groups != (0,):
                raise IndexError("no such group: EOF matched, not a regular expression")
            return self.after
        return self.match.group(*groups)


class _ExpectFailed(Exception):
    def __init__(self, message: str, before: bytes, patterns: list[Pattern]) -> None:
        super().__init__(message)
        self.before = before
        """Everything read and not consumed: it is also still in the stream."""
        self.patterns = patterns


class ExpectTimeout(_ExpectFailed, TimeoutError):
    """No pattern matched within ``timeout``; ``before`` is what was read (still in the stream)."""


class UnexpectedEOF(_ExpectFailed, EOFError):
    """The output ended before any pattern matched (and :data:`EOF` was not one of them)."""


def _compile(patterns: object) -> list[re.Pattern[bytes] | _EOFType]:
    if isinstance(patterns, (bytes, re.Pattern, _EOFType)):
        patterns = [patterns]
    elif isinstance(patterns, str) or not isinstance(patterns, Iterable):
        raise TypeError(
            "patterns must be bytes (a regular expression), a compiled bytes pattern, "
            f"aioproc.EOF, or a list of these, not {type(patterns).__name__}: {patterns!r}"
        )
    compiled: list[re.Pattern[bytes] | _EOFType] = []
    for index, pattern in enumerate(patterns):
        if isinstance(pattern, _EOFType):
            compiled.append(pattern)
        elif isinstance(pattern, bytes):
            compiled.append(re.compile(pattern))
        elif isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, bytes):
            compiled.append(pattern)
        else:
            hint = " (the output is bytes: write b'...')" if isinstance(pattern, str) else ""
            if isinstance(pattern, re.Pattern):
                hint = " (a str pattern: compile a bytes one)"
            raise TypeError(
                f"pattern {index} must be bytes, a compiled bytes pattern or aioproc.EOF, "
                f"not {type(pattern).__name__}: {pattern!r}{hint}"
            )
    if not compiled:
        raise ValueError("patterns is empty: give at least one pattern")
    return compiled


async def expect(
    stream: PipeReceiveStream,
    patterns: Pattern | Iterable[Pattern],
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - pexpect's argument, carried by the error
) -> ExpectMatch:
    """Read ``stream`` until one of ``patterns`` matches; return which, and what came before.

    ``patterns`` is one pattern or a list: ``bytes`` are regular expressions (as
    in pexpect; :func:`exact` makes a literal one), compiled ``re`` patterns are
    used as they are, and :data:`EOF` matches the end of the output. The match
    that starts first wins; of two starting at the same byte, the one listed
    first. The bytes up to the end of the match are consumed; what was read
    past it stays in the stream.

    After ``timeout`` seconds with no match, :class:`ExpectTimeout` is raised;
    at the end of the output, :class:`UnexpectedEOF` (unless :data:`EOF` is a
    pattern). Both carry ``before``, what was read. Like a cancellation, they
    consume nothing: the bytes stay in the stream.

    Every search covers all the bytes not consumed yet, so a pattern can span
    reads. For bulk output, consume it with ``receive()`` or ``lines()``.
    """
    if not isinstance(stream, PipeReceiveStream):
        raise TypeError(
            "expect() reads an aioproc stream (process.stdout or process.stderr), "
            f"not {type(stream).__name__}: {stream!r}"
        )
    compiled = _compile(patterns)
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout)
    ):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, not {timeout!r}")
    regexes = [(i, p) for i, p in enumerate(compiled) if isinstance(p, re.Pattern)]
    eof_index = next((i for i, p in enumerate(compiled) if p is EOF), -1)
    buffer = stream._pending  # read into the stream's own buffer: nothing to give back
    with anyio.move_on_after(math.inf if timeout is None else timeout) as timer:
        while True:
            data = bytes(buffer)  # a match holds its subject: not the buffer we cut
            found = _search(data, regexes)
            if found is not None:
                index, match = found
                before = data[: match.start()]
                after = match.group(0)
                del buffer[: match.end()]
                return ExpectMatch(index, compiled[index], match, before, after)
            try:
                chunk = await stream._receive(_CHUNK)
            except EndOfStream:
                if eof_index < 0:
                    raise UnexpectedEOF(
                        f"the output ended before any of {compiled!r} matched",
                        bytes(buffer),
                        list(compiled),
                    ) from None
                before = bytes(buffer)
                buffer.clear()
                return ExpectMatch(eof_index, EOF, None, before, b"")
            buffer += chunk
    assert timer.cancelled_caught
    raise ExpectTimeout(
        f"none of {compiled!r} matched within {timeout} s", bytes(buffer), list(compiled)
    )


def _search(
    buffer: bytes, regexes: list[tuple[int, re.Pattern[bytes]]]
) -> tuple[int, re.Match[bytes]] | None:
    best: tuple[int, re.Match[bytes]] | None = None
    for index, regex in regexes:
        match = regex.search(buffer)
        if match is not None and (best is None or match.start() < best[1].start()):
            best = (index, match)
    return best
