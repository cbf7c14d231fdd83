"""A child's stdin, stdout and stderr as anyio byte streams.

:class:`PipeReceiveStream` and :class:`PipeSendStream` are the public types:
anyio's ``ByteReceiveStream`` and ``ByteSendStream`` plus line iteration and
read-to-EOF. The classes that do the work on our own non-blocking pipe fds live
here too; the asyncio engine brings its own.

Reads try the fd first and wait for readiness only on ``EAGAIN``, so a busy
pipe costs one ``read`` per chunk and no event-loop round trip. A reader that
keeps finding data would then never yield; every :data:`_YIELD_EVERY`-th call
in a row that did not wait lets other tasks run first.

A pipe holds 64 KiB. A stream that has read 1 MiB from it (a child writing in
bulk) asks the kernel for a 1 MiB pipe: a writer faster than its reader then
blocks, and both sides switch, 16 times less often. Not sooner, and for at
most :data:`_MAX_LARGE_PIPES` pipes at a time per process, because the kernel
counts the pages of enlarged pipes against the user (``pipe-user-pages-soft``),
and past that limit every new pipe of that user is made smaller.

Every fd these streams own is a pipe end held for one of our children. A child
made by ``os.fork()`` inherits them all and must not keep them: a sibling whose
stdin write end it held would never see EOF. So they are registered here, and
closed in the child at fork.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import threading
import weakref
from abc import abstractmethod
from typing import TYPE_CHECKING

import anyio.lowlevel
from anyio import BrokenResourceError, BusyResourceError, ClosedResourceError, EndOfStream
from anyio.abc import ByteReceiveStream, ByteSendStream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .._backends import Backend, FdWatch

__all__ = [
    "FdReceiveStream",
    "FdSendStream",
    "PendingInput",
    "PipeReceiveStream",
    "PipeSendStream",
    "enlarge_pipe",
]

_CHUNK = 65536
_YIELD_EVERY = 16
_ENLARGE_AFTER = 1 << 20  # bytes read from a pipe before it is enlarged
_LARGE_PIPE = 1 << 20
_MAX_LARGE_PIPES = 16
_F_SETPIPE_SZ: int | None = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only

# The id() of each open stream that enlarged its pipe. The lock orders the
# check-then-add between threads; giving a pipe back is a bare set.discard
# (atomic), so that __del__, which may run inside any call, takes no lock.
_large_pipes: set[int] = set()
_large_pipes_lock = threading.Lock()

_held: weakref.WeakSet[_FdOwner] = weakref.WeakSet()


class PipeReceiveStream(ByteReceiveStream):
    """The receiving end of a pipe from a child (its stdout or stderr).

    Besides anyio's ``receive()`` and ``async for chunk in stream``, it reads
    whole lines with :meth:`lines` and everything up to EOF with :meth:`read_all`.
    Bytes read ahead while looking for a line end are kept and returned by the
    next call of any of these, so mixing them loses nothing. Once the stream is
    closed, every read raises ``ClosedResourceError``, read-ahead bytes or not.
    """

    def __init__(self) -> None:
        self._pending = bytearray()

    async def receive(self, max_bytes: int = _CHUNK) -> bytes:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, not {max_bytes!r}")
        if self.closed:  # bytes read ahead go with the stream: anyio's rule
            raise ClosedResourceError
        if self._pending:
            chunk = bytes(self._pending[:max_bytes])
            del self._pending[:max_bytes]
            return chunk
        return await self._receive(max_bytes)

    @abstractmethod
    async def _receive(self, max_bytes: int) -> bytes:
        """Read up to ``max_bytes`` from the pipe itself."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """Whether this end of the pipe was closed (by ``close()`` or ``aclose()``)."""

    @abstractmethod
    def close(self) -> None:
        """Close the pipe now; a task waiting to read gets ``ClosedResourceError``."""

    async def aclose(self) -> None:
        self.close()
        await anyio.lowlevel.checkpoint()

    def _take_pending(self) -> bytes:
        """Take the bytes read ahead and not yet returned (see :meth:`read_all`)."""
        data = bytes(self._pending)
        self._pending.clear()
        return data

    def lines(self) -> AsyncIterator[bytes]:
        """Iterate over lines, each ending with ``b"\\n"`` except perhaps the last one."""
        return _Lines(self)

    async def read_all(self) -> bytes:
        """Read until EOF and return everything.

        If cancelled, what was read so far is kept for the next read.
        """
        if self.closed:
            raise ClosedResourceError
        # BytesIO rather than chunks joined at the end: it grows by realloc, and
        # getvalue() hands over its buffer without a copy (see _native).
        buffer = io.BytesIO()
        buffer.write(self._pending)
        self._pending.clear()
        try:
            while True:
                buffer.write(await self._receive(_CHUNK))
        except EndOfStream:
            return buffer.getvalue()
        except BaseException:
            self._pending[0:0] = buffer.getvalue()
            raise

    async def _readline(self) -> bytes:
        if self.closed:
            raise ClosedResourceError
        pending = self._pending
        searched = 0
        while True:
            end = pending.find(b"\n", searched)
            if end >= 0:
                line = bytes(pending[: end + 1])
                del pending[: end + 1]
                return line
            searched = len(pending)
            try:
                pending += await self._receive(_CHUNK)
            except EndOfStream:
                line = bytes(pending)
                pending.clear()
                return line


class _Lines:
    """Line iterator that keeps its state in the stream, so ``break`` loses nothing."""

    __slots__ = ("_stream",)

    def __init__(self, stream: PipeReceiveStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> bytes:
        line = await self._stream._readline()
        if not line:
            raise StopAsyncIteration
        return line


class PendingInput:
    """The input given to ``communicate()``, and the part of it not yet written.

    A cancelled ``communicate()`` leaves it on the process, and the next call
    writes ``rest``, as ``Popen.communicate()`` does, rather than start over.
    """

    __slots__ = ("given", "rest")

    def __init__(self, given: bytes | bytearray | memoryview) -> None:
        self.given = memoryview(given).cast("B")
        self.rest = self.given

    def same(self, other: bytes | bytearray | memoryview) -> bool:
        """Whether ``other`` is the input given first (a retry passing it again)."""
        return other is self.given.obj or memoryview(other).cast("B") == self.given


class PipeSendStream(ByteSendStream):
    """The sending end of a pipe to a child (its stdin); closing it sends EOF."""

    async def _send_pending(self, pending: PendingInput) -> None:
        """Send ``pending.rest``, moving it on as bytes are taken, so a cancelled
        call can be resumed. This fallback counts bytes only once all went."""
        await self.send(bytes(pending.rest))
        pending.rest = pending.rest[:0]

    @property
    @abstractmethod
    def closed(self) -> bool:
        """Whether this end of the pipe was closed (by ``close()`` or ``aclose()``)."""

    @abstractmethod
    def close(self) -> None:
        """Close the pipe now, which the child reads as EOF."""

    async def aclose(self) -> None:
        self.close()
        await anyio.lowlevel.checkpoint()


class _FdOwner:
    """What both fd streams share: owning the fd, closing it, making it non-blocking.

    The fd is made non-blocking on first use rather than at spawn: a child
    whose pipes nobody touches (``/bin/true`` started for its exit status)
    then costs no ``fcntl`` at all.
    """

    def __init__(self, fd: int, backend: Backend) -> None:
        self._fd = fd
        self._blocking = True
        self._backend = backend
        self._watch = backend.watch(fd)
        self._busy = False
        self._streak = 0
        self._large = False  # this pipe was enlarged, and counts in _large_pipes
        # Closed, the stream wakes this too: the watch of a selector that a
        # communicate() waits on, where the fd is registered (see _native).
        self.wakes_on_close: FdWatch | None = None
        _held.add(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._fd}>"

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _make_nonblocking(self) -> None:
        # F_SETFL alone: a fresh pipe end has no other status flag to keep.
        fcntl.fcntl(self._fd, fcntl.F_SETFL, os.O_NONBLOCK)
        self._blocking = False

    async def aclose(self) -> None:
        self.close()
        await self._backend.checkpoint()

    def close(self) -> None:
        if self._fd >= 0:
            self._watch.close()
            if self.wakes_on_close is not None:
                self.wakes_on_close.close()
                self.wakes_on_close = None
            fd, self._fd = self._fd, -1
            _held.discard(self)
            self._forget_large_pipe()
            os.close(fd)

    def __del__(self) -> None:
        # No event loop may be running now, and this may run inside any call:
        # close the fd alone, taking no lock. Process.__del__ is the one that
        # warns about resources left open.
        if getattr(self, "_fd", -1) >= 0:
            self._forget_large_pipe()
            os.close(self._fd)

    def _enlarge(self) -> None:
        with _large_pipes_lock:
            if len(_large_pipes) >= _MAX_LARGE_PIPES or not enlarge_pipe(self._fd):
                return
            _large_pipes.add(id(self))
        self._large = True

    def _forget_large_pipe(self) -> None:
        if self._large:
            self._large = False
            _large_pipes.discard(id(self))


class FdReceiveStream(_FdOwner, PipeReceiveStream):
    """Reads a pipe fd that this stream owns."""

    def __init__(self, fd: int, backend: Backend) -> None:
        _FdOwner.__init__(self, fd, backend)
        PipeReceiveStream.__init__(self)
        self._unread_until_large = _ENLARGE_AFTER  # bytes; <= 0 once it was tried

    def count_received(self, size: int) -> None:
        """Count bytes read; after enough of them, enlarge the pipe (see the module's doc)."""
        if self._unread_until_large > 0:
            self._unread_until_large -= size
            if self._unread_until_large <= 0:
                self._enlarge()

    async def _receive(self, max_bytes: int) -> bytes:
        if self._busy:
            raise BusyResourceError("reading from")
        self._busy = True
        try:
            if self._streak >= _YIELD_EVERY:
                self._streak = 0
                await self._backend.checkpoint()
            while True:
                if self._fd < 0:
                    raise ClosedResourceError
                if self._blocking:
                    self._make_nonblocking()
                try:
                    data = os.read(self._fd, max_bytes)
                except BlockingIOError:
                    self._streak = 0
                    await self._watch.wait_readable()
                    continue
                except OSError as exc:
                    raise BrokenResourceError(f"reading from the pipe failed: {exc}") from exc
                self._streak += 1
                if not data:
                    raise EndOfStream
                self.count_received(len(data))
                return data
        finally:
            self._busy = False


class FdSendStream(_FdOwner, PipeSendStream):
    """Writes a pipe fd that this stream owns."""

    async def send(self, item: bytes) -> None:
        await self._send(item, whole=False)

    async def send_whole(self, item: bytes | memoryview) -> None:
        """Send all of ``item``; if interrupted after part of it went out, close the stream.

        For messages framed on the pipe: the rest of a message cut short by a
        cancellation could not be told apart from the next one. Closing makes
        the reader see a truncated message and the end of the stream instead.
        """
        await self._send(item, whole=True)

    async def _send_pending(self, pending: PendingInput) -> None:
        if self._busy:
            raise BusyResourceError("writing to")
        self._busy = True
        try:
            while pending.rest:
                if self._fd < 0:
                    raise ClosedResourceError
                if self._blocking:
                    self._make_nonblocking()
                try:
                    written = os.write(self._fd, pending.rest)
                except BlockingIOError:
                    await self._watch.wait_writable()
                    continue
                except BrokenPipeError as exc:
                    raise BrokenResourceError("the child closed its end of the pipe") from exc
                except OSError as exc:
                    raise BrokenResourceError(f"writing to the pipe failed: {exc}") from exc
                pending.rest = pending.rest[written:]
        finally:
            self._busy = False

    async def _send(self, item: bytes | memoryview, whole: bool) -> None:
        if self._busy:
            raise BusyResourceError("writing to")
        self._busy = True
        try:
            if self._streak >= _YIELD_EVERY:
                self._streak = 0
                await self._backend.checkpoint()
            view = memoryview(item).cast("B")
            size = len(view)
            while True:
                if self._fd < 0:
                    raise ClosedResourceError
                if self._blocking:
                    self._make_nonblocking()
                try:
                    written = os.write(self._fd, view)
                except BlockingIOError:
                    self._streak = 0
                    try:
                        await self._watch.wait_writable()
                    except BaseException:
                        if whole and len(view) < size:
                            self.close()
                        raise
                    continue
                except BrokenPipeError as exc:
                    raise BrokenResourceError("the child closed its end of the pipe") from exc
                except OSError as exc:
                    raise BrokenResourceError(f"writing to the pipe failed: {exc}") from exc
                if written == len(view):
                    self._streak += 1
                    return
                view = view[written:]
        finally:
            self._busy = False


def enlarge_pipe(fd: int) -> bool:
    """Ask for a 1 MiB pipe (Linux); return whether it was granted.

    Above ``/proc/sys/fs/pipe-max-size``, or past the user's share of pipe
    pages, it is refused: the default size works, only slower.
    """
    if _F_SETPIPE_SZ is None:
        return False
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _LARGE_PIPE)
    except OSError:
        return False
    return True


def _close_after_fork() -> None:
    """In a child of ``os.fork()``: close every pipe end held for the parent's children.

    The stream objects are marked closed too, so that nothing in the child can
    close their fd numbers later, once those may belong to something else.
    """
    global _large_pipes_lock
    _large_pipes.clear()
    _large_pipes_lock = threading.Lock()
    for stream in list(_held):
        fd, stream._fd = stream._fd, -1
        stream._large = False
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_after_fork)
