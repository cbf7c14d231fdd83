"""The default engine: our own pipes, and exit notification from the child watcher.

No event-loop subprocess machinery is involved, so the same code runs on
asyncio, uvloop and trio: the child is started by ``_request.spawn``, its pipes
are :class:`FdReceiveStream` / :class:`FdSendStream`, and its exit is an fd
from ``_watcher`` awaited like any other.
"""

from __future__ import annotations

import contextlib
import io
import os
import selectors
import warnings
from typing import TYPE_CHECKING, Any

import anyio

from .. import _watcher
from ._process import Process
from ._streams import _CHUNK, FdReceiveStream, FdSendStream

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .._backends import Backend
    from ._request import SpawnedChild

__all__ = ["NativeProcess", "drain"]

_EXIT_WAIT_WITHOUT_LOOP = 1.0  # seconds
_DRAIN_PER_ROUND = 1 << 20  # bytes read from one pipe before the loop gets a turn


class NativeProcess(Process):
    def __init__(
        self,
        args: Any,
        spawned: SpawnedChild,
        backend: Backend,
        *,
        leads_group: bool,
        grace: float,
        deliver_cancel: Callable[[Process], Awaitable[object]] | None,
    ) -> None:
        super().__init__(args, leads_group=leads_group, grace=grace, deliver_cancel=deliver_cancel)
        self._backend = backend
        self._stdin = None if spawned.stdin is None else FdSendStream(spawned.stdin, backend)
        self._stdout = None if spawned.stdout is None else FdReceiveStream(spawned.stdout, backend)
        self._stderr = None if spawned.stderr is None else FdReceiveStream(spawned.stderr, backend)
        try:
            self._child = _watcher.watch(spawned.pid, anchors_group=leads_group)
        except BaseException:
            for stream in (self._stdin, self._stdout, self._stderr):
                if stream is not None:
                    stream.close()
            raise
        self._exit_watch = backend.watch(self._child.exit_fd)
        self._watching = False  # a task is waiting on the exit fd
        self._watch_ended: anyio.Event | None = None  # what the other waiters wait on
        self._on_release: Callable[[], None] | None = None  # set by a waiting communicate()

    @property
    def pid(self) -> int:
        return self._child.pid

    @property
    def returncode(self) -> int | None:
        """The exit status: ``None`` while the child runs, ``-N`` if signal N killed it."""
        return self._child.poll()

    @property
    def stdin(self) -> FdSendStream | None:
        return self._stdin

    @property
    def stdout(self) -> FdReceiveStream | None:
        return self._stdout

    @property
    def stderr(self) -> FdReceiveStream | None:
        return self._stderr

    async def _wait_for_exit(self) -> None:
        # One task at a time waits on the exit fd. The others wait for it to be
        # done; if it was cancelled instead, one of them takes over.
        child = self._child
        while child.returncode is None:
            if self._watching:
                if self._watch_ended is None:
                    self._watch_ended = anyio.Event()
                await self._watch_ended.wait()
                continue
            self._watching = True
            try:
                # ClosedResourceError: released meanwhile, so reaped (or abandoned).
                with contextlib.suppress(anyio.ClosedResourceError):
                    await self._exit_watch.wait_readable()
                self._collect_status()
            finally:
                self._watching = False
                if self._watch_ended is not None:
                    self._watch_ended.set()
                    self._watch_ended = None

    def _collect_status(self) -> None:
        """The child has exited: learn its status, and let it go unless it anchors a group."""
        try:
            self._child.wait_status()
        finally:  # a warning raised as an error comes after the status is stored
            if not self._child.anchors_group and self._child.returncode is not None:
                self._release()

    async def _communicate(
        self, input: bytes | bytearray | memoryview | None, *, feed_stdin: bool
    ) -> tuple[bytes | None, bytes | None]:
        """Here every pipe and the exit fd go into one selector (epoll, kqueue),
        and the event loop waits on the selector's own fd: one task and one wait
        per round, where a task per pipe would cost a task switch each.

        The kernel drops a closed fd from the selector without a word, so
        whoever closes one tells us: a stream closed by another task closes the
        selector's watch, which wakes this with ``ClosedResourceError``; the
        child released by another task (after its exit) takes its exit fd out."""
        if feed_stdin:
            pending = self._pending_input(input)
        else:
            pending = None
            self._check_communicate(input)
        stdin = self._stdin if feed_stdin else None
        if stdin is not None and stdin.closed:
            stdin = None  # already closed, and no input left (checked above): as good as done
        stdout, stderr = self._stdout, self._stderr
        streams: list[FdSendStream | FdReceiveStream] = [
            stream for stream in (stdin, stdout, stderr) if stream is not None
        ]
        if any(stream._busy for stream in streams):
            raise anyio.BusyResourceError("communicating with")
        selector = selectors.DefaultSelector()
        if not hasattr(selector, "fileno"):  # poll() or select(): no fd to wait on
            selector.close()
            return await super()._communicate(input, feed_stdin=feed_stdin)
        # BytesIO, not a list joined at the end: it grows by realloc (mremap for
        # large sizes, no copy) and getvalue() hands over its buffer as it is,
        # where joining a GiB of chunks stalled the loop for a second.
        received: dict[FdReceiveStream, io.BytesIO] = {}
        watch = self._backend.watch(selector.fileno())
        try:
            for stream in streams:
                stream._busy = True
                stream.wakes_on_close = watch
                if stream._blocking:
                    stream._make_nonblocking()
            if stdin is not None:
                if pending is not None and pending.rest:
                    selector.register(stdin._fd, selectors.EVENT_WRITE, stdin)
                else:
                    stdin.wakes_on_close = None
                    stdin.close()
            for reader in (stdout, stderr):
                if reader is not None:
                    received[reader] = io.BytesIO()
                    received[reader].write(reader._pending)
                    reader._pending.clear()
                    selector.register(reader._fd, selectors.EVENT_READ, reader)
            exit_fd = -1
            if self._child.returncode is None:
                exit_fd = self._child.exit_fd
                selector.register(exit_fd, selectors.EVENT_READ)

                def forget_exit() -> None:
                    # Released by another task (it waited, so the child is gone):
                    # the pidfd is about to close, which epoll would not report.
                    with contextlib.suppress(KeyError):
                        selector.unregister(exit_fd)
                    if not selector.get_map():
                        watch.close()

                self._on_release = forget_exit
            while True:
                for key, _ in selector.select(0):
                    stream = key.data
                    if stream is None:  # the exit fd: the child is gone
                        selector.unregister(key.fd)
                    elif isinstance(stream, FdReceiveStream):
                        buffer = received[stream]
                        start = buffer.tell()
                        at_eof = drain(stream._fd, buffer, _DRAIN_PER_ROUND)
                        stream.count_received(buffer.tell() - start)
                        if at_eof:
                            selector.unregister(key.fd)
                    else:
                        assert pending is not None
                        pending.rest = _fill(stream._fd, pending.rest)
                        if not pending.rest:
                            selector.unregister(key.fd)
                            stream.wakes_on_close = None
                            stream.close()
                registered = selector.get_map()
                if not registered:
                    break
                # EOF on the pipes comes a moment before the exit itself: by now
                # the child is usually gone, and a poll saves a round of waiting.
                only_exit_left = len(registered) == 1 and exit_fd in registered
                if only_exit_left and self._child.poll() is not None:
                    break
                try:
                    await watch.wait_readable()
                except anyio.ClosedResourceError:
                    if selector.get_map():
                        raise  # a stream was closed under us: anyio's rule
                    break  # the child was released after its exit, and all was read
        except BaseException:
            for reader, buffer in received.items():
                reader._pending[0:0] = buffer.getvalue()
            raise
        finally:
            self._on_release = None
            watch.close()
            selector.close()
            for stream in streams:
                stream._busy = False
                stream.wakes_on_close = None
        if self._child.returncode is None:
            self._collect_status()
        output = received[stdout].getvalue() if stdout is not None else None
        errors = received[stderr].getvalue() if stderr is not None else None
        return output, errors

    def _signal(self, sig: int, group: bool) -> None:
        self._child.send_signal(sig, group=group)

    def _reap_in_background(self) -> None:
        """Hand a child that is exiting by itself to a task that reaps it: nobody waits for it.

        If the loop shuts down first, the child is waited for without it.
        """
        self._backend.spawn_system_task(self._reap_when_exited, self._reap_without_loop)

    async def _reap_when_exited(self) -> None:
        try:
            await self._wait_for_exit()
        except Exception as exc:  # not into the loop: trio would take it for its own bug
            self._reap_without_loop()  # the cleanup first: the warning may be raised as an error
            with contextlib.suppress(Warning):
                warnings.warn(f"failed to wait for {self!r}: {exc!r}", RuntimeWarning, stacklevel=1)

    def _reap_without_loop(self) -> None:
        # The child is in os._exit(), so its exit is a moment away: wait for it
        # here, within a bound (a process stuck in the kernel can take longer),
        # and past it leave the child to the orphan list rather than hang. Once
        # the child is reaped and released, this does nothing.
        child = self._child
        try:
            if child.poll() is None:
                with (
                    contextlib.suppress(OSError, RuntimeError),
                    selectors.DefaultSelector() as exits,
                ):
                    exits.register(child.exit_fd, selectors.EVENT_READ)
                    exits.select(_EXIT_WAIT_WITHOUT_LOOP)
                child.poll()
        finally:
            self._release()

    def _release(self) -> None:
        self._exit_watch.close()
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release()
        self._child.release()

    def __del__(self) -> None:
        # Dropped without aclose(). A finalizer may run inside any call, even one
        # holding the watcher's locks, so it takes none: the child is handed to the
        # next safe point, which reaps it (or, still running, orphans it), and
        # returncode is read as it is, not polled. The warning comes after that.
        child = getattr(self, "_child", None)
        if child is None:
            return
        _watcher.release_later(child)
        running = child.returncode is None
        streams = (self._stdin, self._stdout, self._stderr)
        open_pipes = [s for s in streams if s is not None and s._fd >= 0]
        if running or open_pipes:
            # Not repr(self): its returncode polls, under the child's lock.
            name = f"<{type(self).__name__} pid={child.pid} returncode={child.returncode} ..>"
            warnings.warn(
                f"{name} was dropped while {'running' if running else 'its pipes were open'}; "
                "use 'async with' or 'await process.aclose()'",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )


def drain(fd: int, chunks: list[bytes] | io.BytesIO, limit: int = -1) -> bool:
    """Read what ``fd`` has (at most ``limit`` bytes, if >= 0); return whether it reached EOF.

    A writer as fast as we read never lets the pipe run dry: the limit is what
    lets the event loop run between rounds.
    """
    put = chunks.append if isinstance(chunks, list) else chunks.write
    while limit:
        try:
            data = os.read(fd, _CHUNK)
        except BlockingIOError:
            return False
        if not data:
            return True
        put(data)
        limit = max(limit - len(data), 0) if limit > 0 else -1
    return False


def _fill(fd: int, data: memoryview) -> memoryview:
    """Write what the pipe takes of ``data``; return the rest (empty if done or refused)."""
    while data:
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:
            break
        except BrokenPipeError:
            # The child closed stdin without reading it all: communicate() ignores that.
            return data[:0]
    return data
