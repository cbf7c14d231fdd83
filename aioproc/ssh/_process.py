"""The remote :class:`Process`: a session through the master, stopped by the guard.

Each command is a session of the master connection, asked for on its control
socket (``_mux``) with our pipes as its stdin, stdout and stderr: no local
process runs for it. The remote command is the wrapper of ``_scripts``; its
stderr starts with one line of ours, ``aioproc-pgid N``, and then carries the
command's own stderr. ``pid`` is that remote process group id (the remote
command's own pid). Signals go to the guard as ``SIGNAL PGID`` lines: the
multiplexing protocol has no way to send SSH's ``signal`` request.

The exit status comes on the control connection, which the master closes once
the session is over and all its output written: that is when :meth:`wait`
returns, as ``ssh -S`` exits then. No status before that end means that the
command died by a signal (the master passes on exit statuses only), or that the
connection was lost: the master, asked on a fresh control connection, tells
which.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from anyio import CancelScope, move_on_after

from .._backends import current_backend
from .._spawn import (
    FdReceiveStream,
    FdSendStream,
    Opener,
    PipeReceiveStream,
    PipeSendStream,
    Process,
    check_file,
    check_grace,
)
from . import _mux
from ._errors import SSHError
from ._scripts import ERROR, PGID, check_env, quote_command, wrapper_script

if TYPE_CHECKING:
    from .._spawn import FileSpec
    from ._host import Host

__all__ = ["RemoteProcess", "RemoteProcessOpener"]

_CHECK_TIMEOUT = 10.0  # seconds for the master's alive check, once a session ended unexplained

# sshd frees a session only once it has handled the channel's close, and it handles
# the packets that arrived together before it does that. So the master's close of a
# session that ended and its open of the next one, arriving together, find every
# session still taken, and the open is refused (seen at MaxSessions in the fan-out
# benchmark, uvloop, 1 run in 2). A refused session ran nothing, so it is asked for
# again, after 1, 2, 4 ... 256 ms (0.5 s in all); still refused, it is an error: the
# server takes fewer sessions than max_sessions.
_REFUSED_FIRST_DELAY = 0.001
_REFUSED_LAST_DELAY = 0.256


class RemoteProcess(Process):
    """A command running on a remote host, with the :class:`aioproc.Process` API.

    ``pid`` is the remote pid of the command, which leads its own process group
    there; :meth:`send_signal`, :meth:`terminate`, :meth:`kill`, :meth:`stop`
    and leaving the ``async with`` block early reach that whole group on the
    remote host. :meth:`wait` raises :class:`SSHError` if the connection was
    lost while the command ran.
    """

    def __init__(
        self,
        args: Any,
        host: Host,
        control: FdReceiveStream,
        stdin: FdSendStream | None,
        stdout: FdReceiveStream | None,
        stderr: FdReceiveStream,
        *,
        stderr_visible: bool,
        grace: float,
        deliver_cancel: Callable[[Process], Awaitable[object]] | None,
    ) -> None:
        super().__init__(args, leads_group=True, grace=grace, deliver_cancel=deliver_cancel)
        self._host = host
        self._replies = _mux.Replies(control)
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._stderr_visible = stderr_visible
        self._pgid: int | None = None
        self._refusal: str | None = None  # "cwd" or "program": the wrapper refused to start
        self._noise: list[bytes] = []  # what came on stderr before our first line
        self._exit_status: int | None = None  # as the master reported it
        self._failure: str | None = None  # why the master refused the session
        self._opened = False  # the master said the session is open
        self._ended = False  # the master closed the control connection
        self._reading = anyio.Lock()  # its acquire is a checkpoint: wait() always is one
        self._returncode: int | None = None
        self._error: SSHError | None = None
        self._last_signal: int | None = None
        self._stopping = False
        self._released = False

    @property
    def host(self) -> Host:
        """The :class:`Host` this command runs on."""
        return self._host

    @property
    def pid(self) -> int:
        """The remote pid of the command, which leads its remote process group (0 until known)."""
        return self._pgid or 0

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def stdin(self) -> PipeSendStream | None:
        return self._stdin

    @property
    def stdout(self) -> PipeReceiveStream | None:
        return self._stdout

    @property
    def stderr(self) -> PipeReceiveStream | None:
        return self._stderr if self._stderr_visible else None

    async def wait(self) -> int:
        """Wait until the remote command exits, and return its exit status (``-N``: signal N).

        Raises :class:`SSHError` if the connection was lost while it ran.
        """
        returncode = await super().wait()
        if self._error is not None:
            raise self._error
        return returncode

    # -- starting -------------------------------------------------------------------------

    async def _handshake(self) -> None:
        """Read our first line on stderr: the remote pgid, or why it did not start."""
        while self._pgid is None and self._refusal is None:
            try:
                line = await self._stderr._readline()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            if not line:
                return
            if line.startswith(PGID):
                self._pgid = int(line[len(PGID) :])
            elif line.startswith(ERROR):
                self._refusal = line[len(ERROR) :].strip().decode()
            else:
                self._noise.append(line)

    async def _abort(self) -> None:
        """Stop a command whose start was interrupted or failed, and release everything
        (shielded). A session that never reported its pgid is waited for: to stop it
        through the guard once it does, or to learn from the master why it ended."""
        with CancelScope(shield=True):
            with move_on_after(self._grace + 1):
                if self._pgid is None and self._refusal is None:
                    await self._handshake()
                if self._pgid is None and self._refusal is None:
                    await self._wait_for_exit()
            await self.stop()

    @property
    def _refused(self) -> bool:
        """Whether the session was refused before it opened: nothing ran."""
        return self._failure is not None and not self._opened

    def _noise_text(self) -> str:
        return self._failure or b"".join(self._noise).decode(errors="replace")

    def _close_output(self) -> None:
        """Close our ends of stdout and stderr, while stopping.

        The master ends a session only once it has written out what the remote
        command sent; with nobody reading, it would wait on a full pipe for
        ever, long after the remote command is gone. Closed, its writes fail and
        the session ends. (A local child needs none of this: a signal ends it anyway.)
        """
        for stream in (self._stdout, self._stderr):
            if stream is not None:
                stream.close()

    async def _stop(self, grace: float) -> BaseException | None:
        self._stopping = True
        if self._deliver_cancel is None:
            self._close_output()  # what is left unread is dropped by a stop in any case
        return await super()._stop(grace)

    # -- the mechanism Process asks for -----------------------------------------------------

    async def _wait_for_exit(self) -> None:
        async with self._reading:  # one reader of the control connection at a time
            while not self._ended:
                try:
                    reply = await self._replies.next()
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    reply = None  # we hung up (see _signal)
                if reply is None:
                    self._ended = True
                elif reply[0] == _mux.EXIT_MESSAGE:
                    self._exit_status = _mux.u32(reply[1], 4)
                elif reply[0] == _mux.SESSION_OPENED:
                    self._opened = True
                elif reply[0] in _mux.FAILURES:
                    self._failure = _mux.string(reply[1], 4)
            if self._returncode is None:
                self._returncode = await self._outcome()

    async def _outcome(self) -> int:
        """The return code of a session that is over, and the error to raise, if any."""
        if self._exit_status is not None:
            return self._exit_status
        host = self._host
        if self._pgid is None:
            self._error = SSHError(
                host.destination, "the command could not be started", self._noise_text()
            )
            return 255
        alive = False
        with CancelScope(shield=True), move_on_after(_CHECK_TIMEOUT):
            alive = await host.is_alive()
        if not alive:
            self._error = SSHError(
                host.destination,
                f"the connection was lost while running {self.args!r}",
                host._master_stderr(),
            )
            return 255
        # Ended by a signal, which the master does not pass on: ours, if we sent one.
        # Any other is reported as ssh reports it, 255.
        return 255 if self._last_signal is None else -self._last_signal

    def _signal(self, sig: int, group: bool) -> None:
        if self._pgid is None:
            # Not started (or not known yet): hang up, as killing `ssh -S` would.
            self._replies.stream.close()
            return
        if self._returncode is not None and not group:
            return
        self._last_signal = sig
        self._host._send_to_guard(sig, self._pgid)
        if sig == signal.SIGKILL and self._stopping:
            self._close_output()  # a deliver_cancel that failed: nothing will read it

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        for stream in (self._stdin, self._stdout, self._stderr, self._replies.stream):
            if stream is not None:
                stream.close()
        self._host._slots.release()

    def __del__(self) -> None:
        # Dropped without aclose(): its streams close themselves (the control
        # connection with them: the master ends the session, and the guard stops the
        # command when the connection ends). Its session slot goes back at the next
        # command; nothing here may take a lock. The warning comes after that.
        if getattr(self, "_released", True):
            return
        self._released = True
        self._host._dropped.append(None)
        warnings.warn(
            f"<RemoteProcess pid={self._pgid} on {self._host.destination!r}> was dropped "
            "before it was closed; use 'async with' or 'await process.aclose()'",
            ResourceWarning,
            stacklevel=1,
            source=self,
        )


def _local_stderr(stderr: FileSpec) -> tuple[str, int | None]:
    """The remote redirection for ``stderr``, and the local fd to copy it to (None: no copy)."""
    if stderr == subprocess.PIPE:
        return "", None
    if stderr == subprocess.DEVNULL:
        return "2>/dev/null", None
    if stderr == subprocess.STDOUT:
        return "2>&1", None
    if stderr is None:  # ours, as a local child inherits it; none open: nowhere
        return ("", 2) if _is_open(2) else ("2>/dev/null", None)
    fd = stderr if isinstance(stderr, int) else int(stderr.fileno())  # as check_file allows
    if not _is_open(fd):
        raise OSError(errno.EBADF, f"stderr={stderr!r} is not an open file descriptor")
    return "", fd


class RemoteProcessOpener(Opener[RemoteProcess]):
    """What :meth:`Host.open_process` returns: await it, or use it with ``async with``."""

    __slots__ = ("_command", "_cwd", "_deliver_cancel", "_env", "_grace", "_host", "_stdio")

    def __init__(
        self,
        host: Host,
        command: object,
        *,
        stdin: FileSpec,
        stdout: FileSpec,
        stderr: FileSpec,
        cwd: object | None,
        env: Mapping[str, str] | None,
        grace: float,
        deliver_cancel: Callable[[Process], Awaitable[object]] | None,
    ) -> None:
        super().__init__()
        self._host = host
        self._command = command
        self._stdio = (stdin, stdout, stderr)
        self._cwd = cwd
        self._env = env
        self._grace = grace
        self._deliver_cancel = deliver_cancel

    async def _open(self) -> RemoteProcess:
        host = self._host
        grace = check_grace(self._grace)
        if self._deliver_cancel is not None and not callable(self._deliver_cancel):
            raise TypeError(
                f"deliver_cancel must be an async callable, not {self._deliver_cancel!r}"
            )
        command_line, program = quote_command(self._command)
        env = None if self._env is None else check_env(self._env)
        stdin, stdout, stderr = self._stdio
        for name, value in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
            check_file(name, value)
        redirect, copy_to = _local_stderr(stderr)
        guard_dir = host._require_open()
        wrapper = wrapper_script(
            command_line, program, guard_dir=guard_dir, cwd=self._cwd, env=env, stderr=redirect
        )
        delay = _REFUSED_FIRST_DELAY
        while True:
            await host._take_slot()
            try:
                process = _start(
                    self._command, host, wrapper, stdin, stdout, stderr, grace, self._deliver_cancel
                )
            except BaseException:
                host._slots.release()
                raise
            try:
                await process._handshake()
            except BaseException:
                await process._abort()
                raise
            if process._pgid is not None:
                break
            await process._abort()
            if not process._refused or delay > _REFUSED_LAST_DELAY:
                raise _refusal_error(process, self._cwd)
            # sshd refused the session before it ran anything. Just after a session of
            # ours ended, that is a race of sshd's own (below): try again, shortly.
            await anyio.sleep(delay)
            delay *= 2
        if copy_to is not None:
            host._copy_stderr(process._stderr, copy_to)
        return process


def _start(
    command: object,
    host: Host,
    wrapper: str,
    stdin: FileSpec,
    stdout: FileSpec,
    stderr: FileSpec,
    grace: float,
    deliver_cancel: Callable[[Process], Awaitable[object]] | None,
) -> RemoteProcess:
    """Ask the master for a session running ``wrapper``, on pipes of ours where asked for.

    stderr is always a pipe of ours: it carries the wrapper's first line. What
    the master is given is closed here once it has it (it keeps copies).
    """
    theirs: list[int] = []  # the session's ends, or our own fds, sent to the master
    opened: list[int] = []  # fds opened here for the master: closed once sent
    ours: list[int] = []  # our ends of the pipes, closed if this fails
    try:
        our_stdin = our_stdout = None
        for spec, default, reads in ((stdin, 0, False), (stdout, 1, True)):
            mine = None
            if spec == subprocess.PIPE:
                read_end, write_end = os.pipe()
                mine, end = (read_end, write_end) if reads else (write_end, read_end)
                ours.append(mine)
                opened.append(end)
            elif spec == subprocess.DEVNULL or (spec is None and not _is_open(default)):
                end = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                opened.append(end)
            elif spec is None:
                end = default
            else:
                end = spec if isinstance(spec, int) else int(spec.fileno())
                if not _is_open(end):
                    name = "stdout" if reads else "stdin"
                    raise OSError(errno.EBADF, f"{name}={spec!r} is not an open file descriptor")
            theirs.append(end)
            if reads:
                our_stdout = mine
            else:
                our_stdin = mine
        read_end, write_end = os.pipe()
        ours.append(read_end)
        opened.append(write_end)
        theirs.append(write_end)
        try:
            stdio = (theirs[0], theirs[1], theirs[2])
            control = _mux.new_session(host.control_path, wrapper, stdio)
        except ConnectionError as exc:  # the master is gone
            raise SSHError(
                host.destination, f"the connection was lost ({exc})", host._master_stderr()
            ) from exc
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in opened:
            os.close(fd)
    backend = current_backend()
    return RemoteProcess(
        command,
        host,
        FdReceiveStream(control, backend),
        None if our_stdin is None else FdSendStream(our_stdin, backend),
        None if our_stdout is None else FdReceiveStream(our_stdout, backend),
        FdReceiveStream(read_end, backend),
        stderr_visible=stderr == subprocess.PIPE,
        grace=grace,
        deliver_cancel=deliver_cancel,
    )


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _refusal_error(process: RemoteProcess, cwd: object) -> Exception:
    destination = process.host.destination
    if process._refusal == "cwd":
        return FileNotFoundError(
            f"{destination}: no such directory (cwd): {os.fsdecode(cwd)!r}"  # type: ignore[arg-type]
        )
    if process._refusal == "program":
        program = process.args if isinstance(process.args, str) else process.args[0]
        return FileNotFoundError(f"{destination}: no such program: {os.fsdecode(program)!r}")
    return SSHError(destination, "the command could not be started", process._noise_text())
