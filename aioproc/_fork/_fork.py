"""``fork`` and ``fork_call``: run a Python callable in an ``os.fork()`` child, get its result.

PHP's ``pcntl_fork`` hands you a pid and leaves the waiting to you. Here the
child is a :class:`ForkedProcess`: the same :class:`Process` as one from
``open_process`` (``wait``, signals, the TERM-grace-KILL shutdown, reaping by
the child watcher), plus :meth:`~ForkedProcess.result` and a message
:attr:`~ForkedProcess.channel`. What the child runs is in ``_child``.

The fork itself runs on the event-loop thread, as a spawn does: it costs about
what copying the parent's page tables costs, which grows with its memory. It
is never handed to a worker thread, because then the child would be forked
from a multi-threaded process by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio import BrokenResourceError, ClosedResourceError, EndOfStream

from .._backends import current_backend
from .._spawn import (
    FdReceiveStream,
    FdSendStream,
    NativeProcess,
    Opener,
    SpawnedChild,
    check_grace,
    drain,
)
from .._watcher import WaiterThread
from ._channel import Channel, ParentChannel, frame_size
from ._child import ALL_SIGNALS, csignal, flush_output, handlers_to_reset, run_child

if TYPE_CHECKING:
    from .._backends import Backend

__all__ = ["ChildDied", "ForkOpener", "ForkedProcess", "fork", "fork_call"]

OnThreads = Literal["warn", "refuse", "allow"]
_ON_THREADS = ("warn", "refuse", "allow")
_READ_SIZE = 1 << 16

_CPYTHON_FORK_WARNING = r"This process \(pid=\d+\) is multi-threaded, use of fork\(\)"


class ChildDied(Exception):
    """The forked child ended without sending a result back.

    It was killed by a signal (``signal`` is set, ``returncode`` is minus its
    number), or it exited before ``fn`` returned: ``os._exit()``, ``sys.exit()``,
    or an uncaught ``KeyboardInterrupt`` (which, as in Python, kills it by SIGINT).
    """

    def __init__(self, pid: int, returncode: int) -> None:
        super().__init__(pid, returncode)
        self.pid = pid
        self.returncode = returncode

    @property
    def signal(self) -> signal.Signals | None:
        """The signal that killed the child, if one did."""
        return signal.Signals(-self.returncode) if self.returncode < 0 else None

    def __str__(self) -> str:
        sig = self.signal
        how = f"was killed by {sig.name}" if sig else f"exited with status {self.returncode}"
        return f"forked child {self.pid} {how} without sending a result"


class ChildTraceback(Exception):
    """The child's formatted traceback, set as ``__cause__`` of an exception it raised."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def fork(
    fn: Callable[..., Any],
    /,
    *args: Any,
    grace: float = 5.0,
    on_threads: OnThreads = "warn",
    **kwargs: Any,
) -> ForkOpener:
    """Fork, and run ``fn(*args, **kwargs)`` in the child.

    Use it as ``async with aioproc.fork(fn, ...) as child:`` (or ``child = await
    aioproc.fork(fn, ...)``, then ``await child.aclose()``). ``fn`` may be a plain
    function or an ``async def``, which runs on a fresh event loop of the
    parent's kind (asyncio, uvloop or trio). Nothing is pickled on the way in:
    the child has a copy of everything. The child reaches the parent through
    :func:`aioproc.parent_channel`.

    Leaving the block normally closes the channel and waits for the child; by an
    exception or a cancellation, the child is stopped first, as an
    ``open_process`` child is: SIGTERM, ``grace`` seconds, SIGKILL. The result
    stays available through ``child.result()`` afterwards.

    ``on_threads`` says what to do when other threads run in this process: a
    child of a multi-threaded process can deadlock on a lock that one of them
    held at the moment of the fork. ``"warn"`` (a ``RuntimeWarning`` that says
    so), ``"refuse"`` (``RuntimeError``, nothing forked) or ``"allow"``.

    ``grace`` and ``on_threads`` are taken from the keywords; to pass keywords
    of those names to ``fn`` itself, use ``functools.partial``.
    """
    if not hasattr(os, "fork"):
        raise RuntimeError(f"aioproc.fork() needs os.fork(), which {sys.platform} does not have")
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__name__}: {fn!r}")
    if on_threads not in _ON_THREADS:
        choices = ", ".join(map(repr, _ON_THREADS))
        raise ValueError(f"on_threads must be one of {choices}, not {on_threads!r}")
    return ForkOpener(fn, args, kwargs, grace=check_grace(grace), on_threads=on_threads)


async def fork_call(
    fn: Callable[..., Any],
    /,
    *args: Any,
    grace: float = 5.0,
    on_threads: OnThreads = "warn",
    **kwargs: Any,
) -> Any:
    """Fork, run ``fn(*args, **kwargs)`` in the child, and return its result.

    The one-shot form of :func:`fork`: the value ``fn`` returned, or its exception
    raised here, or :class:`ChildDied`. If this is cancelled, the child is
    stopped (SIGTERM, ``grace``, SIGKILL) and reaped before the cancellation
    goes on.

    It returns as soon as the result is in, without waiting for the child's
    exit. By then the child has flushed its output and closed every file
    descriptor, and is inside ``os._exit()``; the child watcher reaps it in the
    background, or when the event loop shuts down if that comes first (or, for an
    asyncio loop closed without cancelling its tasks, at the next call into aioproc).
    """
    opener = fork(fn, *args, grace=grace, on_threads=on_threads, **kwargs)
    opener._one_shot = True
    child = await opener._open()
    try:
        await child._read_result()
    except BaseException:
        await child.stop()
        raise
    if child._has_result():
        # The child is exiting, holding nothing of ours (see _child._report):
        # what is left is for the kernel, which takes longer to free a big
        # parent's copy than it took to fork it. Nobody needs to wait for that.
        child._let_go()
    else:
        await child.aclose()  # no result: ChildDied, which needs the exit status
    return child._unwrap()


class ForkOpener(Opener["ForkedProcess"]):
    """What :func:`fork` returns: use it with ``async with``, or await it."""

    __slots__ = ("_args", "_fn", "_grace", "_kwargs", "_on_threads", "_one_shot")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        grace: float,
        on_threads: OnThreads,
    ) -> None:
        super().__init__()
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._grace = grace
        self._on_threads = on_threads
        # fork_call's: nobody holds the child, so nobody can talk to it (see
        # _Pipes), and the call returns before its exit (see run_child).
        self._one_shot = False

    async def _open(self) -> ForkedProcess:
        backend = current_backend()
        loop_factory = _loop_factory(backend)
        # As in open_process: the last point where a cancellation can arrive. From
        # the fork on, nothing awaits until the caller holds the child.
        await backend.checkpoint_if_cancelled()
        _check_threads(self._on_threads)
        flush_output()
        resets = handlers_to_reset()
        pipes = _Pipes(backend, with_channel=not self._one_shot)
        pid = 0
        try:
            # Blocked until the child has reset its handlers: a signal delivered
            # in between would run the parent's handler, or write its number
            # into the parent's event-loop wakeup fd, from the child.
            sigmask = csignal.pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
            try:
                pid = _os_fork()
                if pid == 0:  # pragma: no cover - the child; its coverage is not collected
                    child = pipes.child()
                    run_child(
                        self._fn,
                        self._args,
                        self._kwargs,
                        loop_factory,
                        child,
                        resets,
                        sigmask,
                        one_shot=self._one_shot,
                    )
            finally:
                csignal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
            pipes.close_childs_ends()
        except BaseException:
            pipes.close()
            if pid > 0:  # a KeyboardInterrupt just after the fork: nobody owns the child yet
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)  # noqa: ASYNC222 - it was just killed: this returns at once
            raise
        return ForkedProcess(self._fn, pid, backend, pipes, grace=self._grace)


def _os_fork() -> int:
    if sys.version_info < (3, 12):
        return os.fork()
    # Since 3.12 os.fork() warns when other threads run (gh-100228). aioproc has
    # decided what to say about that already (_check_threads), so it is silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _CPYTHON_FORK_WARNING, DeprecationWarning)
        return os.fork()


class _Pipes:
    """The three pipes of one fork: the result, and the channel both ways.

    Our ends are wrapped in streams before the fork, so the child closes them
    with every other pipe end held for a child (see ``_streams``). Without
    ``with_channel`` (``fork_call``, where the parent has no end to use), our
    channel ends are closed at once: the child's ``receive()`` meets the end of
    the stream and its ``send()`` a closed pipe, as if we had closed them, and
    no stream objects are made for nothing.
    """

    def __init__(self, backend: Backend, *, with_channel: bool) -> None:
        fds: list[int] = []
        try:
            for _ in range(3):
                fds.extend(os.pipe())
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        result_r, result_w, down_r, down_w, up_r, up_w = fds
        ours = (result_r, up_r, down_w) if with_channel else (result_r,)
        for fd in (*ours, down_r, up_w):
            os.set_blocking(fd, False)
        self._childs_ends: tuple[int, ...] = (down_r, up_w, result_w)
        self.result = FdReceiveStream(result_r, backend)
        self.channel: Channel | None = None
        if with_channel:
            self.channel = Channel(
                FdReceiveStream(up_r, backend), FdSendStream(down_w, backend), backend
            )
        else:
            os.close(up_r)
            os.close(down_w)

    def child(self) -> ParentChannel:
        return ParentChannel(*self._childs_ends)

    def close_childs_ends(self) -> None:
        fds, self._childs_ends = self._childs_ends, ()
        for fd in fds:
            os.close(fd)

    def close(self) -> None:
        self.close_childs_ends()
        self.result.close()
        if self.channel is not None:
            self.channel.close()


def _loop_factory(backend: Backend) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """How the child makes its own loop for an async ``fn``: ``None`` means trio.

    Under uvloop the child gets a uvloop; otherwise asyncio's default loop (a
    loop class of another library may not be constructible without arguments).
    """
    if backend.name == "trio":
        return None
    loop_class = type(asyncio.get_running_loop())
    if loop_class.__module__.partition(".")[0] == "uvloop":
        return loop_class
    return asyncio.new_event_loop


def _check_threads(on_threads: OnThreads, who: str = "aioproc.fork()", stacklevel: int = 4) -> None:
    if on_threads == "allow":
        return
    current = threading.current_thread()
    others = [
        thread.name
        for thread in threading.enumerate()
        if thread is not current and not isinstance(thread, WaiterThread)
    ]
    if not others:
        return
    message = (
        f"{who}: {len(others)} other thread(s) run in this process "
        f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}). The child is a "
        "copy of this process with only the forking thread in it: a lock that another "
        "thread held at that moment (in logging, an import, an allocator, any library) "
        "stays locked in the child forever, and the child can deadlock on it. Idle "
        "workers of anyio.to_thread, trio.to_thread or an executor stay about 10 s after "
        "use. Pass on_threads='allow' if those threads hold nothing the child needs, or "
        "on_threads='refuse' to make this an error."
    )
    if on_threads == "refuse":
        raise RuntimeError(message)
    # Four frames up by default: the caller of fork_call(), or of `async with fork()`.
    warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


class ForkedProcess(NativeProcess):
    """A child started by :func:`aioproc.fork`, running a Python callable.

    It is the :class:`Process` an ``open_process`` child is (``pid``,
    ``returncode``, ``wait()``, ``send_signal()``, ``terminate()``, ``kill()``,
    ``stop()``, the same shutdown when its block is left early), without stdio
    pipes, plus :meth:`result` and :attr:`channel`.

    ``fn``'s result comes back on a pipe of its own. Whoever waits for the child
    (``wait()``, ``result()``, leaving the block) reads that pipe first: a large
    result fills the pipe, and the child cannot exit until it is read.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        pid: int,
        backend: Backend,
        pipes: _Pipes,
        *,
        grace: float,
    ) -> None:
        self._result_stream = pipes.result
        self._channel = pipes.channel
        self._frame = bytearray()
        self._outcome: tuple[bool, Any] | None = None
        try:
            super().__init__(
                fn,
                SpawnedChild(pid, None, None, None),
                backend,
                leads_group=False,
                grace=grace,
                deliver_cancel=None,
            )
        except BaseException:
            pipes.close()
            raise
        self._collecting = False  # a task is reading the result or waiting for the exit
        self._collected: anyio.Event | None = None  # what the other waiters wait on

    def __repr__(self) -> str:
        return f"<ForkedProcess pid={self.pid} returncode={self.returncode} fn={self.args!r}>"

    @property
    def channel(self) -> Channel:
        """The parent's end of the message channel: an ``anyio.abc.ObjectStream``."""
        assert self._channel is not None, "only fork_call() makes a child without one"
        return self._channel

    async def result(self) -> Any:
        """Wait for the child to exit; return what ``fn`` returned, or raise what it raised.

        An exception from the child keeps its type; its ``__cause__`` carries the
        child's formatted traceback. A result or an exception that could not be
        pickled raises ``pickle.PicklingError`` naming its type. A child that
        exited or was killed before sending a result raises :class:`ChildDied`.
        """
        if not self._result_stream.closed:
            await self._wait_for_exit()
        else:
            await self._backend.checkpoint()
        return self._unwrap()

    def _unwrap(self) -> Any:
        if self._outcome is None:
            self._outcome = self._decode()
        ok, payload = self._outcome
        if ok:
            return payload
        raise payload

    def _decode(self) -> tuple[bool, Any]:
        size = frame_size(self._frame)
        if size < 0 or len(self._frame) < size:
            returncode = self.returncode
            assert returncode is not None
            return False, ChildDied(self.pid, returncode)
        try:
            ok, payload = pickle.loads(memoryview(self._frame)[8:size])
        except Exception as exc:
            error = pickle.UnpicklingError(
                f"the result of forked child {self.pid} cannot be unpickled: {exc!r}"
            )
            error.__cause__ = exc
            return False, error
        finally:
            self._frame = bytearray()
        if not ok:
            raised, text = payload
            raised.__cause__ = ChildTraceback(text)
            payload = raised
        return ok, payload

    # -- reading the result while waiting ---------------------------------------------

    async def _wait_for_exit(self) -> None:
        # Read the result, then wait for the exit: one wait at a time in one task,
        # no task group. That matters after a fork, where each page either process
        # writes costs a fault. Reading first cannot hang: the result pipe is the
        # child's alone (closed on exec and in whatever it forks), so its EOF comes
        # with the child's exit at the latest.
        # One task at a time collects: the others wait for it to be done, and if it
        # was cancelled instead, one of them takes over where it stopped.
        while self._collecting:
            if self._collected is None:
                self._collected = anyio.Event()
            await self._collected.wait()
        self._collecting = True
        try:
            await self._read_result()
            if self.returncode is None:
                await super()._wait_for_exit()
            self._finish_result()
        finally:
            self._collecting = False
            if self._collected is not None:
                self._collected.set()
                self._collected = None

    async def _read_result(self) -> None:
        """Read the result pipe until the result is whole, or the child closed the pipe."""
        stream = self._result_stream
        if not stream.closed:
            with contextlib.suppress(EndOfStream, ClosedResourceError, BrokenResourceError):
                while not self._has_result():
                    self._frame += await stream.receive(_READ_SIZE)

    def _has_result(self) -> bool:
        size = frame_size(self._frame)
        return 0 <= size <= len(self._frame)

    def _let_go(self) -> None:
        """Close our ends, and leave the reaping to a background task (see ``fork_call``)."""
        self._result_stream.close()
        self._close_streams()
        self._reap_in_background()

    def _finish_result(self) -> None:
        # The child has exited: what is left in the pipe is there now, at most a
        # pipeful. Read it without waiting (the pipe end is non-blocking).
        stream = self._result_stream
        if not stream.closed:
            chunks: list[bytes] = []
            drain(stream._fd, chunks)
            self._frame += b"".join(chunks)
            stream.close()

    # -- what differs from a spawned child on the way out ------------------------------

    async def _communicate(
        self, input: bytes | bytearray | memoryview | None, *, feed_stdin: bool
    ) -> tuple[bytes | None, bytes | None]:
        # No stdio to feed or read; what matters is to read the result meanwhile.
        self._check_communicate(input)
        await self.wait()
        return None, None

    def _close_streams(self) -> None:
        # The channel goes first, as stdout does for a spawned child: a child blocked
        # on it then fails and exits. The result pipe stays open until it is read.
        if self._channel is not None:
            self._channel.close()

    async def stop(self, grace: float | None = None) -> None:
        await super().stop(grace)
        if not self._collecting:
            self._finish_result()

    async def aclose(self) -> None:
        await super().aclose()
        if not self._collecting:
            self._finish_result()
