"""``engine="asyncio"``: the same Process API over asyncio's own subprocess support.

The loop spawns the child, owns the pipe transports and reaps the child with
its own watcher (a thread per child on 3.11, a pidfd on 3.12+, libuv's SIGCHLD
handler under uvloop). aioproc adds what asyncio lacks: ``wait()`` returns at
the child's exit, not when its pipes close (asyncio only wakes ``wait()`` once
every pipe is disconnected, so a grandchild holding stdout would hang it,
cpython#119710), and the shutdown policy of :class:`Process`.

Caveat of this engine: asyncio reaps in its own time, so a group signal sent
after the child exited cannot be made safe against pid reuse, and is skipped.
"""

from __future__ import annotations

import asyncio
import asyncio.subprocess
import contextlib
import os
import signal
from typing import TYPE_CHECKING, Any

import anyio.lowlevel
from anyio import BrokenResourceError, BusyResourceError, ClosedResourceError, EndOfStream

from .. import _watcher
from .._backends import run_to_completion
from .._watcher import _pidfd
from ._process import Process
from ._streams import PendingInput, PipeReceiveStream, PipeSendStream

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._request import SpawnRequest

__all__ = ["AsyncioProcess", "open_asyncio_process"]

_LIMIT = 1 << 16


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


class _ReaderStream(PipeReceiveStream):
    def __init__(
        self,
        reader: asyncio.StreamReader,
        transport: asyncio.BaseTransport,
        on_close: Callable[[], None],
    ) -> None:
        super().__init__()
        self._reader = reader
        self._transport = transport
        self._closed = False
        self._on_close = on_close

    async def _receive(self, max_bytes: int) -> bytes:
        if self._closed:
            raise ClosedResourceError
        try:
            data = await self._reader.read(max_bytes)
        except RuntimeError as exc:  # "read() called while another coroutine is ..."
            raise BusyResourceError("reading from") from exc
        except ClosedResourceError:
            raise ClosedResourceError from None
        if self._closed:
            raise ClosedResourceError
        if not data:
            raise EndOfStream
        return data

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport.close()
            # Wake a task blocked in read(): with the transport gone, nothing would.
            # (Not feed_eof(): uvloop may still deliver data read before the close.)
            self._reader.set_exception(ClosedResourceError())
            self._on_close()


class _WriterStream(PipeSendStream):
    def __init__(self, writer: asyncio.StreamWriter, on_close: Callable[[], None]) -> None:
        self._writer = writer
        self._closed = False
        self._on_close = on_close

    async def send(self, item: bytes) -> None:
        await self._write_then_drain(item)

    async def _send_pending(self, pending: PendingInput) -> None:
        # The transport takes it all at once and writes it in the background,
        # even if drain() is then cancelled: it is sent as soon as it is written.
        await self._write_then_drain(bytes(pending.rest), pending)

    async def _write_then_drain(self, item: bytes, pending: PendingInput | None = None) -> None:
        if self._closed:
            raise ClosedResourceError
        try:
            self._writer.write(item)
            if pending is not None:
                pending.rest = pending.rest[:0]
            await self._writer.drain()
        except (ConnectionResetError, BrokenPipeError, RuntimeError) as exc:
            # uvloop raises RuntimeError for a write to a closed transport.
            if self._closed:
                raise ClosedResourceError from exc
            raise BrokenResourceError("the child closed its end of the pipe") from exc

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()
            self._on_close()


class AsyncioProcess(Process):
    def __init__(
        self,
        args: Any,
        transport: asyncio.SubprocessTransport,
        protocol: _Protocol,
        *,
        leads_group: bool,
        grace: float,
        deliver_cancel: Callable[[Process], Awaitable[object]] | None,
    ) -> None:
        super().__init__(args, leads_group=leads_group, grace=grace, deliver_cancel=deliver_cancel)
        self._transport = transport
        self._protocol = protocol
        self._pid = transport.get_pid()
        self._on_uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        self._lost_status: bool | None = None  # decided at the first 255 seen
        # Signals go through a pidfd where there is one, never through
        # transport.send_signal(): Popen.send_signal() polls first, and that poll
        # reaps an exited child behind the back of asyncio's watcher, which
        # then reports 255. None: no pidfd here; -1: the child was already reaped.
        self._pidfd: int | None = None
        if _pidfd.available():
            try:
                self._pidfd = os.pidfd_open(self._pid)
            except ProcessLookupError:
                self._pidfd = -1

        def pipe(fd: int) -> asyncio.BaseTransport:
            pipe_transport = transport.get_pipe_transport(fd)
            assert pipe_transport is not None
            return pipe_transport

        # A pipe left to the caller (run_process under start()) holds off the release.
        self._release_pending = False
        on_close = self._stream_closed
        self._stdin = None if protocol.stdin is None else _WriterStream(protocol.stdin, on_close)
        self._stdout = (
            None if protocol.stdout is None else _ReaderStream(protocol.stdout, pipe(1), on_close)
        )
        self._stderr = (
            None if protocol.stderr is None else _ReaderStream(protocol.stderr, pipe(2), on_close)
        )

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        returncode = self._transport.get_returncode()
        if returncode == 255 and self._sigchld_ignored_at_exit():
            # The kernel reaped the child, and asyncio reports the lost status as
            # 255; the native engine, subprocess and trio report 0.
            return 0
        return returncode

    def _sigchld_ignored_at_exit(self) -> bool:
        # libuv (uvloop) installs its own SIGCHLD handler, and gets the true status.
        if self._lost_status is None:
            self._lost_status = not self._on_uvloop and _watcher.sigchld_ignored()
        return self._lost_status

    @property
    def stdin(self) -> _WriterStream | None:
        return self._stdin

    @property
    def stdout(self) -> _ReaderStream | None:
        return self._stdout

    @property
    def stderr(self) -> _ReaderStream | None:
        return self._stderr

    async def _wait_for_exit(self) -> None:
        await self._protocol.exited.wait()

    def _signal(self, sig: int, group: bool) -> None:
        if self.returncode is not None or self._pidfd == -1:
            return
        try:
            if group:
                os.killpg(self._pid, sig)
            elif self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self._pid, sig)
        except ProcessLookupError:
            pass

    def _release(self) -> None:
        streams = (self._stdin, self._stdout, self._stderr)
        if any(stream is not None and not stream.closed for stream in streams):
            # The transport owns the pipes: closing it would close the caller's
            # too. The last of them to close releases it (_stream_closed).
            self._release_pending = True
            return
        self._release_pending = False
        self._transport.close()
        self._close_pidfd()

    def _stream_closed(self) -> None:
        if self._release_pending:
            self._release()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None and self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def __del__(self) -> None:
        if getattr(self, "_pidfd", None) is not None:
            self._close_pidfd()


async def open_asyncio_process(
    command: Any,
    request: SpawnRequest,
    *,
    grace: float,
    deliver_cancel: Callable[[Process], Awaitable[object]] | None,
) -> AsyncioProcess:
    loop = asyncio.get_running_loop()

    def factory() -> _Protocol:
        return _Protocol(_LIMIT, loop)

    options = dict(request.popen_kwargs)
    if type(loop).__module__.startswith("uvloop"):
        options = _uvloop_options(options)
    elif _watcher.sigchld_ignored() and _asyncio_watches_by_pidfd():
        raise RuntimeError(
            "engine='asyncio' cannot start a child while SIGCHLD is ignored: asyncio's pidfd "
            "child watcher fails, and leaks the pipes, when the kernel reaps the child before "
            "it is watched; use the default engine"
        )
    stdio: dict[str, Any] = {
        "stdin": request.stdin,
        "stdout": request.stdout,
        "stderr": request.stderr,
        **options,
    }
    await anyio.lowlevel.checkpoint_if_cancelled()

    async def start() -> AsyncioProcess:
        try:
            if isinstance(request.args, (str, bytes)):
                transport, protocol = await loop.subprocess_shell(factory, request.args, **stdio)
            else:
                transport, protocol = await loop.subprocess_exec(factory, *request.args, **stdio)
        except OSError as exc:
            if exc.filename is not None or exc.errno is None:
                raise
            # uvloop's errors do not say what was missing; Popen's do.
            cwd = request.popen_kwargs.get("cwd")
            if cwd is not None and not os.path.isdir(cwd):  # noqa: ASYNC240 - error path only
                culprit = cwd
            else:
                culprit = request.args if request.shell else request.args[0]
            raise type(exc)(exc.errno, exc.strerror, culprit) from exc
        return AsyncioProcess(
            command,
            transport,
            protocol,
            leads_group=request.leads_group,
            grace=grace,
            deliver_cancel=deliver_cancel,
        )

    # Run to completion: cancelled half-way, asyncio kills the child and awaits
    # its exit, but a cancellation keeps cancelling that await too, and the
    # transport and the child are left behind. So the spawn completes, and a
    # cancellation that came meanwhile (anyio's or a plain Task.cancel()) stops
    # the child before it goes on.
    process = await run_to_completion(start, undo=_stop)
    try:
        await anyio.lowlevel.checkpoint_if_cancelled()
    except BaseException:
        await process.stop()
        raise
    return process


def _asyncio_watches_by_pidfd() -> bool:
    """Whether asyncio's own child watcher is its pidfd one (3.12 on, where pidfd works)."""
    from asyncio import unix_events

    can_use_pidfd = getattr(unix_events, "can_use_pidfd", None)
    return can_use_pidfd is not None and bool(can_use_pidfd())


async def _stop(process: AsyncioProcess) -> None:
    await process.stop()


def _uvloop_options(options: dict[str, Any]) -> dict[str, Any]:
    """Fit Popen's options to what uvloop's subprocess support takes.

    uvloop ignores ``close_fds`` and rejects ``umask`` and ``process_group``. It
    does fork (libuv has no vfork path here) and runs a ``preexec_fn`` in the
    child, so those three are done there: the fds to close are the ones that
    are inheritable now, because only those would survive the exec anyway.
    """
    unsupported = [name for name in ("user", "group", "extra_groups") if name in options]
    if unsupported:
        raise ValueError(
            f"engine='asyncio' on uvloop cannot set {', '.join(unsupported)} (uvloop does not "
            "support it); use the default engine"
        )
    close_fds = options.pop("close_fds", True)
    umask = options.pop("umask", -1)
    pgid = options.pop("process_group", None)
    keep = {0, 1, 2, *options.get("pass_fds", ())}
    inherited = []
    if close_fds:
        for name in os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"):
            fd = int(name)
            if fd not in keep and _inheritable(fd):
                inherited.append(fd)
    preexec_fn = options.pop("preexec_fn", None)
    if not (inherited or umask >= 0 or pgid is not None or preexec_fn):
        return options

    def prepare_child() -> None:
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        if umask >= 0:
            os.umask(umask)
        if pgid is not None:
            os.setpgid(0, pgid)
        if preexec_fn is not None:
            preexec_fn()

    options["preexec_fn"] = prepare_child
    return options


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:
        return False
