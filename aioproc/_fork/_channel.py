"""The message channel between a forked child and its parent, and the frames it carries.

A frame is an 8-byte big-endian length and a pickle. The same frames carry the
child's result on a pipe of its own (``_fork``), and the messages both ways
on two more pipes, here:

* the parent's end, :class:`Channel`, is an anyio ``ObjectStream`` over our
  async fd streams;
* the child's end, :class:`ParentChannel`, reached through
  :func:`parent_channel`, works from plain code (blocking in ``poll``) and from
  async code (waiting on the child's own event loop), over the same buffers.

Why a module-level accessor rather than a keyword argument given to ``fn``: the
function keeps its own signature, so the same ``fn`` runs unchanged in a fork,
in a thread or in a test; code deep in the call stack can reach the parent
without it being passed down; and a process has one parent, so there is no
doubt which channel is meant.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import select
import struct
from typing import TYPE_CHECKING, Any

import anyio
from anyio import BrokenResourceError, BusyResourceError, ClosedResourceError, EndOfStream
from anyio.abc import ObjectStream

from .._backends import current_backend
from .._spawn import enlarge_pipe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from .._backends import Backend
    from .._spawn import FdReceiveStream, FdSendStream

__all__ = ["Channel", "ParentChannel", "pack", "parent_channel", "type_name", "unpack"]

_HEADER = struct.Struct(">Q")
_CHUNK = 65536


def pack(obj: object) -> memoryview:
    """Pickle ``obj`` into one frame, written in place behind room for its header.

    What cannot be pickled raises ``pickle.PicklingError`` naming its type (pickle
    itself raises ``TypeError`` for some, ``AttributeError`` for others).
    """
    buffer = io.BytesIO()
    buffer.write(bytes(_HEADER.size))
    try:
        pickle.dump(obj, buffer, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise pickle.PicklingError(f"a {type_name(obj)} cannot be pickled: {exc}") from exc
    frame = buffer.getbuffer()
    _HEADER.pack_into(frame, 0, len(frame) - _HEADER.size)
    return frame


def type_name(obj: object) -> str:
    """The qualified name of the type of ``obj``, as messages about it show it."""
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def frame_size(buffer: bytearray) -> int:
    """The size of the whole frame at the start of ``buffer``, or -1 if its header is incomplete."""
    if len(buffer) < _HEADER.size:
        return -1
    return _HEADER.size + int(_HEADER.unpack_from(buffer)[0])


def unpack(buffer: bytearray) -> tuple[bool, Any]:
    """Take the first frame out of ``buffer``: ``(True, obj)``, or ``(False, None)`` if partial."""
    size = frame_size(buffer)
    if size < 0 or len(buffer) < size:
        return False, None
    # Taken out before unpickling: a message that fails to unpickle is lost, but
    # does not block the ones after it.
    data = buffer[_HEADER.size : size]
    del buffer[:size]
    return True, pickle.loads(data)


class Channel(ObjectStream[Any]):
    """The parent's end of the channel to a forked child: ``child.channel``.

    Any picklable object can be sent and received. ``receive()`` raises
    ``anyio.EndOfStream`` once the child has closed its end or exited, and
    ``async for message in child.channel`` stops there. ``send_eof()`` tells the
    child that no more messages are coming while its answers can still be read.
    ``send()`` raises ``anyio.BrokenResourceError`` once the child is gone.

    A message is sent whole or not at all: if a ``send()`` is cancelled after
    part of it went out, the way to the child is closed (the child sees a
    broken channel) rather than left out of step. One task at a time may send,
    and one may receive (``anyio.BusyResourceError`` otherwise).
    """

    def __init__(self, receiver: FdReceiveStream, sender: FdSendStream, backend: Backend) -> None:
        self._receiver = receiver
        self._sender = sender
        self._backend = backend
        self._buffer = bytearray()

    async def send(self, item: Any) -> None:
        await self._sender.send_whole(pack(item))

    async def receive(self) -> Any:
        # A cancellation is delivered before a message is taken, never after.
        await self._backend.checkpoint_if_cancelled()
        buffer = self._buffer
        while True:
            complete, obj = unpack(buffer)
            if complete:
                return obj
            try:
                buffer += await self._receiver.receive(_CHUNK)
            except EndOfStream:
                if buffer:
                    buffer.clear()
                    raise BrokenResourceError(
                        "the child closed the channel in the middle of a message"
                    ) from None
                raise

    async def send_eof(self) -> None:
        await self._sender.aclose()

    def close(self) -> None:
        """Close both directions now: the child's next receive sees the end of the stream."""
        # The way back first: once the child sees the end, its sends must fail,
        # not slip into a pipe that nobody will read.
        self._receiver.close()
        self._sender.close()

    async def aclose(self) -> None:
        self.close()
        await self._backend.checkpoint()


class ParentChannel:
    """A forked child's end of the channel to its parent: see :func:`parent_channel`.

    From plain code, :meth:`send` and :meth:`receive` block, and ``for message in
    channel`` reads until the parent closes its end. From async code (an ``async
    def fn``, on the child's own event loop) use :meth:`asend`, :meth:`areceive`
    and ``async for``. Both raise ``anyio.EndOfStream`` at the end of the stream
    and ``anyio.BrokenResourceError`` when sending to a parent that closed its end.
    As on the parent's side, a message is sent whole or the channel is closed.
    """

    def __init__(self, receive_fd: int, send_fd: int, result_fd: int) -> None:
        # The channel fds are non-blocking: the async methods wait on the event
        # loop, the plain ones in poll(). The result fd is written once, blocking.
        self._receive_fd = receive_fd
        self._send_fd = send_fd
        self._result_fd = result_fd
        self._buffer = bytearray()
        self._sending = self._receiving = False

    def __repr__(self) -> str:
        return f"<ParentChannel receive_fd={self._receive_fd} send_fd={self._send_fd}>"

    def send(self, obj: Any) -> None:
        """Send ``obj`` to the parent, blocking while the pipe is full."""
        frame = pack(obj)
        self._start("sending")
        try:
            self._send(frame, _block)
        finally:
            self._sending = False

    def receive(self) -> Any:
        """Wait for the next message from the parent; ``anyio.EndOfStream`` when there is none."""
        self._start("receiving")
        try:
            while True:
                complete, obj = unpack(self._buffer)
                if complete:
                    return obj
                if not self._read():
                    _block(self._receive_fd, select.POLLIN)
        finally:
            self._receiving = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return self.receive()
        except EndOfStream:
            raise StopIteration from None

    async def asend(self, obj: Any) -> None:
        """Send ``obj`` to the parent from async code, waiting on the child's event loop."""
        frame = pack(obj)
        size = len(frame)
        await anyio.lowlevel.checkpoint()
        self._start("sending")
        try:
            while frame:
                written = self._write(frame)
                if written >= 0:
                    frame = frame[written:]
                    continue
                try:
                    await current_backend().watch(self._send_fd).wait_writable()
                except BaseException:
                    self._close_send_if_torn(len(frame), size)
                    raise
        finally:
            self._sending = False

    async def areceive(self) -> Any:
        """Wait for the next message from the parent from async code."""
        await anyio.lowlevel.checkpoint()  # before a message is taken, never after
        self._start("receiving")
        try:
            while True:
                complete, obj = unpack(self._buffer)
                if complete:
                    return obj
                if not self._read():
                    await current_backend().watch(self._receive_fd).wait_readable()
        finally:
            self._receiving = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.areceive()
        except EndOfStream:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Close both directions: the parent's next receive sees the end of the stream."""
        fds = (self._receive_fd, self._send_fd)
        self._receive_fd = self._send_fd = -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    # -- the mechanics ------------------------------------------------------------------

    def _start(self, what: str) -> None:
        attribute = "_" + what
        if getattr(self, attribute):
            raise BusyResourceError(what)
        setattr(self, attribute, True)

    def _send(self, frame: memoryview, block: Callable[[int, int], None]) -> None:
        size = len(frame)
        while frame:
            written = self._write(frame)
            if written >= 0:
                frame = frame[written:]
                continue
            try:
                block(self._send_fd, select.POLLOUT)
            except BaseException:
                self._close_send_if_torn(len(frame), size)
                raise

    def _write(self, frame: memoryview) -> int:
        """Write what fits now; -1 if nothing does."""
        if self._send_fd < 0:
            raise ClosedResourceError
        try:
            return os.write(self._send_fd, frame)
        except BlockingIOError:
            return -1
        except BrokenPipeError:
            raise BrokenResourceError("the parent closed its end of the channel") from None

    def _close_send_if_torn(self, left: int, size: int) -> None:
        if left < size and self._send_fd >= 0:
            fd, self._send_fd = self._send_fd, -1
            os.close(fd)

    def _read(self) -> bool:
        """Read what is there now into the buffer; False if nothing is."""
        if self._receive_fd < 0:
            raise ClosedResourceError
        try:
            data = os.read(self._receive_fd, _CHUNK)
        except BlockingIOError:
            return False
        if not data:
            if self._buffer:
                self._buffer.clear()
                raise BrokenResourceError(
                    "the parent closed the channel in the middle of a message"
                )
            raise EndOfStream
        self._buffer += data
        return True

    @property
    def result_fd(self) -> int:
        """The write end of the result pipe, or -1 once the result is sent."""
        return self._result_fd

    def send_result(self, payload: bytes) -> None:
        """Write the final result, a pickle, framed as a message is (blocking); close the pipe.

        The channel is closed by then (``fn`` has returned): see ``_child``.
        The header goes first on its own, so that the payload is not copied behind it.
        """
        fd, self._result_fd = self._result_fd, -1
        self._receive_fd = self._send_fd = -1
        try:
            if len(payload) > _CHUNK:
                enlarge_pipe(fd)
            os.write(fd, _HEADER.pack(len(payload)))  # 8 bytes: never written in part
            rest = memoryview(payload)
            while rest:
                rest = rest[os.write(fd, rest) :]
        finally:
            os.close(fd)

    def forget(self) -> None:
        """In a grandchild made by ``os.fork()``: this is the child's link, not ours; close it."""
        fds = (self._receive_fd, self._send_fd, self._result_fd)
        self._receive_fd = self._send_fd = self._result_fd = -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _block(fd: int, event: int) -> None:
    poller = select.poll()
    poller.register(fd, event)
    poller.poll()


_parent: ParentChannel | None = None


def parent_channel() -> ParentChannel:
    """In a child started by :func:`aioproc.fork`, return its channel to the parent.

    ``fn`` calls this wherever it needs the channel, sync or async; anywhere
    else it raises ``RuntimeError``.
    """
    if _parent is None:
        raise RuntimeError(
            "parent_channel() is only available in a child started by aioproc.fork()"
        )
    return _parent


def set_parent(channel: ParentChannel) -> None:
    global _parent
    _parent = channel


def _forget_parent_after_fork() -> None:
    global _parent
    if _parent is not None:
        _parent.forget()
        _parent = None


os.register_at_fork(after_in_child=_forget_parent_after_fork)
