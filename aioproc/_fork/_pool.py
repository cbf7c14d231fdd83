"""``ForkPool``: warm forked workers that run callables, and heal when one dies.

Three kinds of process take part:

* the **parent** (us): it pickles each call, writes it to an idle worker's
  request pipe, and reads the outcome from that worker's result pipe, in the
  task that awaits :meth:`ForkPool.run` (no dispatcher task in between);
* the **template**, forked from the parent once, at ``__aenter__``: blocking
  code with no event loop, in a process group of its own, stdin on
  ``/dev/null``. On request it forks a worker (which hands the parent its ends
  of its two pipes over the control socket, ``SCM_RIGHTS``, first thing),
  reaps its workers and reports each exit status back, and signals a worker
  when asked: the worker is its child, so a signal never reaches a recycled pid;
* the **workers**: each reads a call, runs it, writes the outcome, and goes on
  until its request pipe ends. They are forked from the single-threaded
  template, so the parent's threads never matter after the pool starts.

The template holds no worker's pipe ends when it forks the next one (it closes
its copies once the fork returns), and every pipe end the parent holds is closed in
whatever the parent forks later: so closing a request pipe always reaches its
worker as EOF.

Frames are ``_channel``'s (an 8-byte length and a pickle); outcomes are
``_child``'s ``(ok, payload)`` pickles, with the child's traceback as
``__cause__``.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import pickle
import select
import signal
import socket
import struct
import sys
import traceback
import weakref
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
from anyio import BrokenResourceError, ClosedResourceError

from .. import _watcher
from .._backends import current_backend
from .._spawn import FdReceiveStream, FdSendStream, check_grace, enlarge_pipe
from ._channel import frame_size, type_name
from ._child import (
    ALL_SIGNALS,
    _call,
    _forget_event_loops,
    _pack_exception,
    _pickle,
    csignal,
    exit_child,
    flush_output,
    handlers_to_reset,
)
from ._fork import (
    _ON_THREADS,
    ChildDied,
    ChildTraceback,
    OnThreads,
    _check_threads,
    _loop_factory,
    _os_fork,
)

if TYPE_CHECKING:
    import asyncio

    from anyio.abc import TaskGroup

    from .._backends import Backend, FdWatch

__all__ = ["ForkPool", "PoolBroken"]

T = TypeVar("T")

_HEADER = struct.Struct(">Q")
_CHUNK = 1 << 16
_BIG_READ = 1 << 20
_EX_SOFTWARE = 70

# Control records, template <-> parent: kind, pid, value.
_RECORD = struct.Struct("=iii")
_SPAWN, _SIGNAL, _SPAWNED, _EXITED, _SPAWN_FAILED = range(1, 6)
_SOCK_TYPE = getattr(socket, "SOCK_SEQPACKET", socket.SOCK_STREAM)
_RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


class PoolBroken(Exception):
    """The pool cannot keep its workers up: they die as they start, again and again.

    Every queued and later call raises it; ``__cause__`` is the last failure
    (the initializer's exception, or :class:`ChildDied`). A worker that dies
    while running a call does not break the pool: that call raises
    :class:`ChildDied` and the worker is replaced.
    """


class _Call:
    __slots__ = ("assigned", "frame", "worker")

    def __init__(self, frame: memoryview) -> None:
        self.frame: memoryview = frame  # what is left to write
        self.assigned: anyio.Event | None = None  # made when the call has to queue
        self.worker: _Worker | None = None

    def wake(self) -> None:
        if self.assigned is not None:
            self.assigned.set()


class _Worker:
    __slots__ = ("call", "calls", "done", "exited", "pid", "requests", "results", "returncode")

    def __init__(self, pid: int, requests: FdSendStream, results: FdReceiveStream) -> None:
        self.pid = pid
        self.requests = requests
        self.results = results
        self.returncode: int | None = None
        self.exited = anyio.Event()
        self.call: _Call | None = None
        self.calls = 0  # calls given to it

    def close(self) -> None:
        self.requests.close()
        self.results.close()


class ForkPool:
    """Warm forked workers that run ``fn(*args, **kwargs)`` and send back the result.

    ``async with aioproc.ForkPool(workers=4) as pool: value = await pool.run(fn, x)``

    * ``workers``: how many processes (default ``os.cpu_count()``);
    * ``max_tasks_per_child``: a worker that has run this many calls is
      replaced by a fresh one (default ``None``: never);
    * ``grace``: seconds between SIGTERM and SIGKILL when a running call is
      cancelled or the pool is stopped (default 5);
    * ``initializer(*initargs)`` runs in each worker before its first call;
    * ``on_threads``: what to do if other threads run when the pool starts
      (``"warn"``, ``"refuse"``, ``"allow"``), as for :func:`aioproc.fork`.
      Later threads do not matter: workers are forked from the template.

    ``fn``, its arguments and its result are pickled; functions and classes go
    by reference (module and name), looked up in the worker, which is a copy
    of this process as it was when the pool started.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        max_tasks_per_child: int | None = None,
        grace: float = 5.0,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        on_threads: OnThreads = "warn",
    ) -> None:
        if workers is None:
            workers = os.cpu_count() or 1
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, not {workers!r}")
        if max_tasks_per_child is not None and (
            isinstance(max_tasks_per_child, bool)
            or not isinstance(max_tasks_per_child, int)
            or max_tasks_per_child < 1
        ):
            raise ValueError(
                f"max_tasks_per_child must be None or a positive int, not {max_tasks_per_child!r}"
            )
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {type(initializer).__name__}")
        if on_threads not in _ON_THREADS:
            choices = ", ".join(map(repr, _ON_THREADS))
            raise ValueError(f"on_threads must be one of {choices}, not {on_threads!r}")
        if not hasattr(os, "fork"):
            raise RuntimeError(f"ForkPool needs os.fork(), which {sys.platform} does not have")
        self._size = workers
        self._max_tasks = max_tasks_per_child
        self._grace = check_grace(grace)
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._on_threads = on_threads
        self._state = "new"  # new, open, closing, closed
        self._broken: tuple[str, BaseException | None] | None = None
        self._workers: dict[int, _Worker] = {}
        self._idle: list[_Worker] = []
        self._queue: deque[_Call] = deque()
        self._starting: dict[int, _Worker] = {}  # spawned, not yet ready
        self._spawning = 0  # asked of the template, not yet answered
        self._start_failures = 0  # in a row, since a worker last became ready
        self._changed: anyio.Event | None = None  # set when a worker exits or frees up
        self._template: _watcher.Child | None = None
        self._sock: socket.socket | None = None
        self._sock_watch: FdWatch | None = None
        self._backend: Backend | None = None
        self._tg: TaskGroup | None = None
        self._outbox: list[bytes] = []
        self._services: set[anyio.CancelScope] = set()

    def __repr__(self) -> str:
        return f"<ForkPool workers={self._size} state={self._state} pids={list(self.pids)}>"

    @property
    def pids(self) -> tuple[int, ...]:
        """The pids of the workers running now (started and not yet exited)."""
        return tuple(self._workers)

    # -- opening --------------------------------------------------------------------------

    async def __aenter__(self) -> ForkPool:
        if self._state != "new":
            raise RuntimeError("a ForkPool can be entered once")
        backend = self._backend = current_backend()
        loop_factory = _loop_factory(backend)
        await backend.checkpoint_if_cancelled()
        _check_threads(self._on_threads, "aioproc.ForkPool", stacklevel=3)
        flush_output()
        ours, theirs = socket.socketpair(socket.AF_UNIX, _SOCK_TYPE)
        resets = handlers_to_reset()
        pid = 0
        try:
            # The first workers are asked for before the template exists: it forks
            # them as soon as it runs, not once we are done with our side of the fork
            # (copying the pages we touch, setting up the watch): about 1 ms of the
            # 7 to the first result, measured here.
            for _ in range(self._size):
                ours.send(_RECORD.pack(_SPAWN, 0, 0))
            sigmask = csignal.pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
            try:
                pid = _os_fork()
                if pid == 0:  # pragma: no cover - the template
                    os.close(ours.detach())
                    _template_main(
                        theirs.detach(),
                        resets,
                        sigmask,
                        _WorkerSpec(loop_factory, self._initializer, self._initargs),
                    )
            finally:
                csignal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
            theirs.close()
            with contextlib.suppress(OSError):  # the template does it too: whoever comes first
                os.setpgid(pid, pid)
            self._template = _watcher.watch(pid, anchors_group=True)
        except BaseException:
            ours.close()
            theirs.close()
            if pid > 0 and self._template is None:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)  # noqa: ASYNC222 - just killed: returns at once
            raise
        ours.setblocking(False)
        self._sock = ours
        self._sock_watch = backend.watch(ours.fileno())
        _open_pools.add(self)
        self._state = "open"
        try:
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
            self._spawning = self._size  # asked for above
            self._tg.start_soon(self._service, self._serve_template)
        except BaseException:
            self._kill_now()
            raise
        return self

    # -- calls ----------------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a worker and return its result, or raise what it raised.

        The child's traceback is the exception's ``__cause__``. A worker that dies
        while running it raises :class:`ChildDied` (and is replaced). Cancelled
        while queued, the call is removed; while running, its worker is stopped
        (SIGTERM, ``grace``, SIGKILL) and replaced in the background, and the
        cancellation goes on at once.
        """
        frame = _pack_call(fn, args, kwargs)
        backend = self._check_open()
        await backend.checkpoint_if_cancelled()
        self._check_open()
        call = _Call(frame)
        if self._idle:
            worker = self._idle.pop()
            self._start(worker, call)
        else:
            call.assigned = anyio.Event()
            self._queue.append(call)
            try:
                await call.assigned.wait()
            except BaseException:
                if call.worker is None:
                    self._queue.remove(call)
                    raise
                self._abandon(call.worker)
                raise
            if call.worker is None:  # the pool broke or stopped meanwhile
                self._check_open()
                raise RuntimeError("the ForkPool was stopped")
            worker = call.worker
        outcome = await self._finish(worker, call)
        if outcome is None:
            await worker.exited.wait()
            assert worker.returncode is not None
            raise ChildDied(worker.pid, worker.returncode)
        return _unwrap(outcome)  # type: ignore[no-any-return]

    async def _finish(self, worker: _Worker, call: _Call) -> bytearray | None:
        """Send what is left of the call, read its outcome; None if the worker died."""
        try:
            if call.frame:
                with contextlib.suppress(BrokenResourceError):  # it died: EOF tells below
                    await worker.requests.send_whole(call.frame)
            outcome = await _read_frame(worker.results)
        except ClosedResourceError:
            outcome = None  # the pool was killed under us (_kill_now): the worker is gone
        except BaseException:
            self._abandon(worker)
            raise
        if outcome is None:
            worker.call = None
            worker.close()
            return None
        self._free(worker)
        return outcome

    def _check_open(self) -> Backend:
        if self._broken is not None:
            message, cause = self._broken
            raise PoolBroken(message) from cause
        if self._state != "open":
            raise RuntimeError(f"the ForkPool is {self._state}: use it inside 'async with'")
        assert self._backend is not None
        return self._backend

    def _start(self, worker: _Worker, call: _Call) -> None:
        """Give ``call`` to ``worker``: write what fits in its pipe now."""
        worker.call = call
        worker.calls += 1
        call.worker = worker
        fd = worker.requests._fd
        try:
            while call.frame:
                call.frame = call.frame[os.write(fd, call.frame) :]
        except BlockingIOError:
            pass  # the caller's task writes the rest
        except OSError:  # it died: its result pipe tells
            call.frame = call.frame[:0]

    def _free(self, worker: _Worker) -> None:
        """``worker`` finished its call: recycle it, or give it the next one."""
        worker.call = None
        if worker.returncode is not None or worker.requests.closed:
            worker.close()
            return
        if self._max_tasks is not None and worker.calls >= self._max_tasks:
            self._retire(worker)
            return
        self._give_work(worker)

    def _give_work(self, worker: _Worker) -> None:
        while self._queue:
            call = self._queue.popleft()
            self._start(worker, call)
            call.wake()
            return
        if self._state == "closing":
            self._retire(worker)
            return
        self._idle.append(worker)
        self._notify()

    def _retire(self, worker: _Worker) -> None:
        """Let ``worker`` go: EOF on its requests, and it exits (replaced if the pool is open)."""
        worker.requests.close()
        if worker.returncode is not None:
            worker.results.close()

    def _abandon(self, worker: _Worker) -> None:
        """A running call was cancelled: stop its worker in the background. Synchronous."""
        worker.call = None
        worker.requests.close()
        if worker.returncode is not None:
            worker.results.close()
        else:  # its result pipe stays open until it exits (_exited): no EPIPE in the worker
            self._signal(worker.pid, signal.SIGTERM)
            if self._tg is not None and self._state in ("open", "closing"):
                with contextlib.suppress(RuntimeError):
                    self._tg.start_soon(self._service, self._kill_after_grace, worker)
                    return
            self._signal(worker.pid, signal.SIGKILL)

    async def _service(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run one of the pool's own tasks, shielded from the cancellation of the block:
        it must see the workers out. The pool cancels it when it is done."""
        with anyio.CancelScope(shield=True) as scope:
            self._services.add(scope)
            try:
                await fn(*args)
            finally:
                self._services.discard(scope)

    async def _kill_after_grace(self, worker: _Worker) -> None:
        with anyio.move_on_after(self._grace):
            await worker.exited.wait()
        if worker.returncode is None:
            self._signal(worker.pid, signal.SIGKILL)

    # -- map ------------------------------------------------------------------------------

    def map(
        self,
        fn: Callable[..., T],
        /,
        *iterables: Iterable[Any] | AsyncIterable[Any],
        ordered: bool = True,
        window: int | None = None,
    ) -> _MapIterator[T]:
        """Run ``fn`` on each item (on items taken in step from several iterables, like
        ``map()``); ``async for`` its results.

        ``ordered=True`` yields them in the order of the items, ``False`` as they come.
        At most ``window`` calls (default: twice the workers) are in flight, so an
        endless iterable is fine. The first exception ends the iteration and cancels
        the calls still running. Leaving the loop early (``break``) leaves them
        running until the iterator is closed (``await it.aclose()``, or use it in
        ``async with``) or the pool's block ends.
        """
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        for position, iterable in enumerate(iterables):
            if not isinstance(iterable, Iterable | AsyncIterable):
                raise TypeError(
                    f"map() argument {position + 2} must be iterable, not {type_name(iterable)}"
                )
        if window is None:
            window = 2 * self._size
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, not {window!r}")
        return _MapIterator(self, fn, iterables, ordered=ordered, window=window)

    # -- the template's reports -----------------------------------------------------------

    def _spawn(self) -> None:
        self._spawning += 1
        self._send_record(_SPAWN, 0, 0)

    def _signal(self, pid: int, sig: int) -> None:
        self._send_record(_SIGNAL, pid, sig)

    def _send_record(self, kind: int, pid: int, value: int) -> None:
        sock = self._sock
        if sock is None:
            return
        record = _RECORD.pack(kind, pid, value)
        if not self._outbox:
            try:
                sock.send(record)
                return
            except BlockingIOError:
                pass
            except OSError:
                return  # the template is gone: _serve_template sees it
            self._outbox.append(record)
            if self._tg is not None:
                self._tg.start_soon(self._service, self._flush_outbox)
        else:
            self._outbox.append(record)

    async def _flush_outbox(self) -> None:
        assert self._backend is not None
        assert self._sock is not None
        watch = self._backend.watch(self._sock.fileno())
        try:
            while self._outbox and self._sock is not None:
                try:
                    self._sock.send(self._outbox[0])
                except BlockingIOError:
                    await watch.wait_writable()
                    continue
                except OSError:
                    self._outbox.clear()
                    return
                del self._outbox[0]
        except ClosedResourceError:
            self._outbox.clear()
        finally:
            watch.close()

    async def _serve_template(self) -> None:
        """Take the template's reports until it closes the socket."""
        assert self._sock is not None
        assert self._sock_watch is not None
        sock, watch = self._sock, self._sock_watch
        try:
            while True:
                try:
                    data, fds, _, _ = socket.recv_fds(sock, _RECORD.size, 2, _RECV_FLAGS)
                except BlockingIOError:
                    await watch.wait_readable()
                    continue
                if len(data) < _RECORD.size:
                    for fd in fds:
                        os.close(fd)
                    break
                kind, pid, value = _RECORD.unpack(data)
                if kind == _SPAWNED:
                    self._spawned(pid, fds)
                elif kind == _EXITED:
                    self._exited(pid, value)
                elif kind == _SPAWN_FAILED:
                    self._spawning -= 1
                    error = OSError(
                        value, f"the pool's template could not fork: {os.strerror(value)}"
                    )
                    self._start_failed(error)
        except (ClosedResourceError, OSError):
            pass
        self._template_gone()

    def _spawned(self, pid: int, fds: list[int]) -> None:
        self._spawning -= 1
        assert self._backend is not None
        requests_fd, results_fd = fds
        for fd in fds:
            os.set_blocking(fd, False)
        worker = _Worker(
            pid,
            FdSendStream(requests_fd, self._backend),
            FdReceiveStream(results_fd, self._backend),
        )
        worker.requests._blocking = worker.results._blocking = False
        self._workers[pid] = worker
        self._starting[pid] = worker
        if self._state == "stopping":
            self._signal(pid, signal.SIGKILL)
        assert self._tg is not None
        self._tg.start_soon(self._service, self._await_ready, worker)

    async def _await_ready(self, worker: _Worker) -> None:
        """The worker's first frame says that its initializer ran."""
        try:
            frame = await _read_frame(worker.results)
        except (ClosedResourceError, BrokenResourceError):
            frame = None
        self._starting.pop(worker.pid, None)
        if worker.results.closed:
            return
        if frame is None:
            await worker.exited.wait()
            assert worker.returncode is not None
            worker.close()
            self._start_failed(ChildDied(worker.pid, worker.returncode))
            return
        try:
            _unwrap(frame)
        except Exception as exc:
            self._retire(worker)
            self._start_failed(exc)
            return
        self._start_failures = 0
        if self._state == "open" or (self._state == "closing" and self._queue):
            self._give_work(worker)
        else:
            self._retire(worker)

    def _start_failed(self, error: BaseException) -> None:
        self._start_failures += 1
        if self._start_failures >= max(3, 2 * self._size):
            self._break(
                f"the pool's workers die as they start: {self._start_failures} in a row, "
                f"the last: {error}",
                error,
            )
        # The replacement is asked for once the worker's exit is reported.

    def _exited(self, pid: int, returncode: int) -> None:
        worker = self._workers.pop(pid, None)
        if worker is None:
            # It died before it could hand us its pipes (see _fork_worker).
            self._spawning = max(0, self._spawning - 1)
            self._start_failed(ChildDied(pid, returncode))
            if self._broken is None and self._state == "open":
                self._spawn()
            self._notify()
            return
        worker.returncode = returncode
        worker.exited.set()
        if worker in self._idle:
            self._idle.remove(worker)
        if worker.call is None and pid not in self._starting:
            worker.close()
        if self._broken is None and (
            self._state == "open" or (self._state == "closing" and self._queue)
        ):
            self._spawn()
        self._notify()

    def _break(self, message: str, cause: BaseException | None) -> None:
        if self._broken is not None:
            return
        self._broken = (message, cause)
        while self._queue:
            self._queue.popleft().wake()  # no worker: run() raises the error
        for worker in list(self._idle):
            self._retire(worker)
        self._idle.clear()
        self._notify()

    def _template_gone(self) -> None:
        """The template closed its socket unasked: it died, and no worker is watched any more."""
        if self._sock is None:
            return  # we closed it: the template is exiting as asked
        self._break("the pool's template process exited", None)
        if self._template is not None:
            self._template.send_signal(signal.SIGKILL, group=True)
        for pid in list(self._workers):
            self._exited(pid, -signal.SIGKILL)
        self._spawning = 0
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    # -- closing --------------------------------------------------------------------------

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                try:
                    await self._close()
                except BaseException:
                    await self.stop()
                    raise
            else:
                await self.stop()
        except BaseException:
            self._kill_now()
            raise
        finally:
            self._state = "closed"
            _open_pools.discard(self)
            tg, self._tg = self._tg, None
            if tg is not None:
                for scope in self._services:
                    scope.cancel()
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)

    async def _close(self) -> None:
        """Wait for the running and queued calls, then let every worker go."""
        self._state = "closing"
        for worker in list(self._idle):
            self._retire(worker)
        self._idle.clear()
        while self._workers or self._spawning:
            if not self._queue:
                for worker in list(self._workers.values()):
                    if worker.call is None and worker.pid not in self._starting:
                        self._retire(worker)
            await self._wait_change()
        await self._end_template()

    async def stop(self) -> None:
        """Stop every worker now (SIGTERM, ``grace``, SIGKILL) and the template; shielded.

        What leaving the block by an exception or a cancellation does. Queued
        calls raise ``RuntimeError``; running calls raise :class:`ChildDied`.
        """
        if self._state in ("new", "closed"):
            return
        self._state = "stopping"
        with anyio.CancelScope(shield=True):
            while self._queue:
                self._queue.popleft().wake()
            for worker in list(self._idle):
                self._retire(worker)
            self._idle.clear()
            for pid in self._workers:
                self._signal(pid, signal.SIGTERM)
            with anyio.move_on_after(self._grace):
                while self._workers or self._spawning:
                    await self._wait_change()
            for pid in self._workers:
                self._signal(pid, signal.SIGKILL)
            while self._workers or self._spawning:
                await self._wait_change()
            await self._end_template()

    async def _end_template(self) -> None:
        """Close the control socket: the template exits. Reap it."""
        template = self._template
        self._close_sock()
        if template is None:
            return
        assert self._backend is not None
        watch = self._backend.watch(template.exit_fd)
        try:
            if template.poll() is None:
                await watch.wait_readable()
            template.wait_status()
            template.send_signal(signal.SIGKILL, group=True)  # what its workers left behind
        finally:
            watch.close()
        template.release()
        self._template = None

    def _close_sock(self) -> None:
        sock, self._sock = self._sock, None
        if self._sock_watch is not None:
            self._sock_watch.close()
        if sock is not None:
            sock.close()

    def _kill_now(self) -> None:
        """The last resort, with no await: SIGKILL the template's group, reap it, close all."""
        self._state = "closed"
        template, self._template = self._template, None
        if template is not None:
            template.send_signal(signal.SIGKILL, group=True)
        self._close_sock()
        if template is not None:
            template.wait_status()
            template.release()
        for worker in list(self._workers.values()):
            worker.returncode = -signal.SIGKILL
            worker.exited.set()
            worker.close()
        self._workers.clear()
        self._idle.clear()
        while self._queue:
            self._queue.popleft().wake()


_open_pools: weakref.WeakSet[ForkPool] = weakref.WeakSet()


def _forget_pools_after_fork() -> None:
    """In any child forked from a process with open pools: their control sockets are not ours.

    (Their workers' pipe ends are streams, which ``_streams`` closes at fork.)
    """
    for pool in list(_open_pools):
        sock, pool._sock = pool._sock, None
        pool._sock_watch = None
        pool._template = None
        if sock is not None:
            with contextlib.suppress(OSError):
                os.close(sock.detach())
    _open_pools.clear()


os.register_at_fork(after_in_child=_forget_pools_after_fork)


class _MapIterator(AsyncIterator[T]):
    """What :meth:`ForkPool.map` returns: ``async for`` it; ``aclose()`` cancels what runs."""

    def __init__(
        self,
        pool: ForkPool,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any] | AsyncIterable[Any], ...],
        *,
        ordered: bool,
        window: int,
    ) -> None:
        self._pool = pool
        self._fn = fn
        self._iterables = iterables
        self._ordered = ordered
        self._window = window
        self._arrived: deque[tuple[int, bool, Any]] = deque()  # index -1: the iterable failed
        self._wakeup: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._started = self._finished = self._done = self._failed = False
        self._next = 0
        self._held: dict[int, tuple[bool, Any]] = {}

    def __aiter__(self) -> _MapIterator[T]:
        return self

    async def __aenter__(self) -> _MapIterator[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def __anext__(self) -> T:
        if not self._started:
            self._started = True
            pool = self._pool
            pool._check_open()
            assert pool._tg is not None
            self._scope = anyio.CancelScope()
            pool._tg.start_soon(self._drive)
        while not self._done:
            if self._ordered and self._next in self._held:
                ok, value = self._held.pop(self._next)
                self._next += 1
                return self._deliver(ok, value)
            if self._arrived:
                index, ok, value = self._arrived.popleft()
                if index < 0 or not self._ordered:
                    return self._deliver(ok, value)
                self._held[index] = (ok, value)
                continue
            if self._finished:
                if self._held:  # a call before these was cancelled: what is left, in order
                    self._next = min(self._held)
                    continue
                break
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        self._done = True
        raise StopAsyncIteration

    def _deliver(self, ok: bool, value: Any) -> T:
        if ok:
            return value  # type: ignore[no-any-return]
        self._done = True
        if self._scope is not None:
            self._scope.cancel()
        raise value

    def _put(self, index: int, ok: bool, value: Any) -> None:
        self._arrived.append((index, ok, value))
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    async def aclose(self) -> None:
        """Stop: the calls still running are cancelled (their workers replaced)."""
        self._done = True
        if self._scope is not None:
            self._scope.cancel()
        self._arrived.clear()
        self._held.clear()
        await anyio.lowlevel.checkpoint()

    async def _drive(self) -> None:
        assert self._scope is not None
        limit = anyio.Semaphore(self._window)

        async def one(index: int, args: tuple[Any, ...]) -> None:
            try:
                value = await self._pool.run(self._fn, *args)
            except Exception as exc:
                self._put(index, False, exc)
                self._failed = True  # no new calls; those running finish, for the order
                if not self._ordered:
                    self._scope.cancel()  # type: ignore[union-attr]
            else:
                self._put(index, True, value)
            finally:
                limit.release()

        try:
            with self._scope:
                async with (
                    contextlib.aclosing(_zip(self._iterables)) as items,
                    anyio.create_task_group() as tg,
                ):
                    index = 0
                    async for args in items:
                        await limit.acquire()
                        if self._done or self._failed:
                            break
                        tg.start_soon(one, index, args)
                        index += 1
        except Exception as exc:  # the iterable itself failed
            self._put(-1, False, exc)
        finally:
            self._finished = True
            self._wake()


async def _zip(
    iterables: tuple[Iterable[Any] | AsyncIterable[Any], ...],
) -> AsyncGenerator[tuple[Any, ...], None]:
    iterators = [aiter(it) if isinstance(it, AsyncIterable) else iter(it) for it in iterables]
    while True:
        args = []
        for it in iterators:
            try:
                if isinstance(it, AsyncIterator):
                    args.append(await anext(it))
                else:
                    args.append(next(it))
            except (StopIteration, StopAsyncIteration):
                return
        yield tuple(args)


# -- the parent's side of a frame -----------------------------------------------------


def _pack_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> memoryview:
    """One frame with the call, pickled; a pickling error names what could not be sent."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type_name(fn)}: {fn!r}")
    buffer = bytearray(_HEADER.size)
    try:
        buffer += pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise pickle.PicklingError(
            f"cannot send {_culprit(fn, args, kwargs)} to a pool worker: {exc}"
        ) from exc
    _HEADER.pack_into(buffer, 0, len(buffer) - _HEADER.size)
    return memoryview(buffer)


def _culprit(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts: list[tuple[str, Any]] = [("the function", fn)]
    parts += [(f"argument {i + 1}", arg) for i, arg in enumerate(args)]
    parts += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
    for what, obj in parts:
        try:
            pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            return f"{what}, a {type_name(obj)} ({_short_repr(obj)}),"
    return "the call"


def _short_repr(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception:
        return "?"
    return text if len(text) <= 80 else text[:77] + "..."


async def _read_frame(stream: FdReceiveStream) -> bytearray | None:
    """Read one frame from a worker's result pipe: its payload, or None at EOF."""
    fd = stream._fd
    header = bytearray()
    while len(header) < _HEADER.size:
        chunk = await _read_some(stream, _CHUNK)
        if not chunk:
            return None
        header += chunk
        fd = stream._fd
    size = frame_size(header)
    payload = bytearray(size - _HEADER.size)
    have = len(header) - _HEADER.size
    payload[:have] = memoryview(header)[_HEADER.size :]
    view = memoryview(payload)
    while have < len(payload):
        try:
            count = os.readv(fd, [view[have : have + _BIG_READ]])
        except BlockingIOError:
            await stream._watch.wait_readable()
            fd = stream._fd
            if fd < 0:
                raise ClosedResourceError from None
            continue
        if count == 0:
            return None
        have += count
        stream.count_received(count)
    return payload


async def _read_some(stream: FdReceiveStream, size: int) -> bytes:
    while True:
        fd = stream._fd
        if fd < 0:
            raise ClosedResourceError
        try:
            return os.read(fd, size)
        except BlockingIOError:
            await stream._watch.wait_readable()


def _unwrap(payload: bytearray) -> Any:
    try:
        ok, value = pickle.loads(payload)
    except Exception as exc:
        raise pickle.UnpicklingError(
            f"the result from a pool worker cannot be unpickled: {exc!r}"
        ) from exc
    if ok:
        return value
    raised, text = value
    raised.__cause__ = ChildTraceback(text)
    raise raised


# -- the template and the workers (run in forked children, never return) --------------


class _WorkerSpec:
    __slots__ = ("initargs", "initializer", "loop_factory")

    def __init__(
        self,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        self.loop_factory = loop_factory
        self.initializer = initializer
        self.initargs = initargs


def _template_main(
    sock_fd: int, resets: list[tuple[int, Any]], sigmask: object, spec: _WorkerSpec
) -> NoReturn:  # pragma: no cover - runs in the template
    status = _EX_SOFTWARE
    try:
        csignal.set_wakeup_fd(-1)
        for sig, handler in resets:
            csignal.signal(sig, handler)
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        gc.freeze()
        _forget_event_loops()
        sock = socket.socket(fileno=sock_fd)
        sock.setblocking(True)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.signal(signal.SIGCHLD, _ignore)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        csignal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
        csignal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        workers: set[int] = set()
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        running = True
        while running:
            for fd, _ in poller.poll():
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                    _reap(workers, sock)
                    continue
                try:
                    record = sock.recv(_RECORD.size)
                except OSError:
                    record = b""
                if len(record) < _RECORD.size:
                    running = False
                    break
                kind, pid, value = _RECORD.unpack(record)
                if kind == _SPAWN:
                    _fork_worker(sock, (wake_r, wake_w), workers, spec)
                elif kind == _SIGNAL and pid in workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, value)
        # The parent is done, or gone: nothing may outlive us.
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        flush_output()
        os._exit(status)


def _ignore(signum: int, frame: object) -> None:  # pragma: no cover - in the template
    pass


def _reap(workers: set[int], sock: socket.socket) -> None:  # pragma: no cover - in the template
    while workers:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)  # the template's children are all workers
        except ChildProcessError:
            return
        if pid == 0:
            return
        workers.discard(pid)
        with contextlib.suppress(OSError):
            sock.send(_RECORD.pack(_EXITED, pid, os.waitstatus_to_exitcode(status)))


def _fork_worker(
    sock: socket.socket, wake: tuple[int, int], workers: set[int], spec: _WorkerSpec
) -> None:  # pragma: no cover - in the template
    try:
        requests_r, requests_w = os.pipe()
        results_r, results_w = os.pipe()
    except OSError as exc:
        sock.send(_RECORD.pack(_SPAWN_FAILED, 0, exc.errno or errno.EMFILE))
        return
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in (requests_r, requests_w, results_r, results_w):
            os.close(fd)
        sock.send(_RECORD.pack(_SPAWN_FAILED, 0, exc.errno or errno.EAGAIN))
        return
    if pid == 0:
        # The worker hands the parent its ends itself, at once: the parent can talk
        # to it before our fork() has returned here (0.3 to 0.5 ms later, measured).
        # If it dies before this, our report of its exit is the first the parent
        # hears of it; if after, that report comes after this record.
        try:
            socket.send_fds(sock, [_RECORD.pack(_SPAWNED, os.getpid(), 0)], [requests_w, results_r])
        except OSError:
            os._exit(0)  # the parent is gone
        os.close(requests_w)
        os.close(results_r)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(wake[0])
        os.close(wake[1])
        os.close(sock.detach())
        _worker_main(requests_r, results_w, spec)
    workers.add(pid)
    for fd in (requests_r, requests_w, results_r, results_w):
        os.close(fd)


def _worker_main(
    requests: int, results: int, spec: _WorkerSpec
) -> NoReturn:  # pragma: no cover - in a worker
    status = _EX_SOFTWARE
    try:
        try:
            status = _serve(requests, results, spec)
        except BrokenPipeError:
            status = 0  # the parent stopped listening: it is stopping us
        except BaseException:
            traceback.print_exc()
    finally:
        exit_child(status)


def _serve(requests: int, results: int, spec: _WorkerSpec) -> int:  # pragma: no cover
    """Run the initializer, say ready, then run calls until EOF; return the exit status."""
    if spec.initializer is not None:
        try:
            spec.initializer(*spec.initargs)
        except Exception as exc:
            _write_frame(results, _pack_exception(spec.initializer, exc))
            return 1
    _write_frame(results, _pickle((True, None)))
    buffer = bytearray()
    while True:
        data = _read_request(requests, buffer)
        if data is None:
            return 0
        try:
            fn, args, kwargs = pickle.loads(data)
        except Exception as exc:
            error = pickle.UnpicklingError(
                f"the worker cannot unpickle the call: {exc!r} (functions and classes go "
                "by reference: they must be importable, or defined before the pool started)"
            )
            outcome = _pack_exception(_serve, error, exc)
        else:
            del data
            result, code = _call(fn, args, kwargs, spec.loop_factory)
            del fn, args, kwargs
            if result is None:  # sys.exit(), or KeyboardInterrupt
                return code
            outcome = result
        flush_output()
        _write_frame(results, outcome)
        del outcome


def _read_request(fd: int, buffer: bytearray) -> bytearray | None:  # pragma: no cover
    """Block until a whole frame has arrived; its payload, or None at EOF."""
    while True:
        size = frame_size(buffer)
        if 0 <= size <= len(buffer):
            payload = buffer[_HEADER.size : size]
            del buffer[:size]
            return payload
        want = max(_CHUNK, size - len(buffer)) if size > 0 else _CHUNK
        data = os.read(fd, min(want, _BIG_READ))
        if not data:
            return None
        buffer += data


def _write_frame(fd: int, payload: bytes) -> None:  # pragma: no cover - in a worker
    if len(payload) > _CHUNK:
        enlarge_pipe(fd)
    os.write(fd, _HEADER.pack(len(payload)))
    rest = memoryview(payload)
    while rest:
        rest = rest[os.write(fd, rest) :]
