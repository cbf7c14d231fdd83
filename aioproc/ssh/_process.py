"""The remote :class:`Process`: a local ``ssh`` client through the master, stopped by the guard.

The local child is a multiplexed ``ssh`` client whose remote command is the
wrapper of ``_scripts``. Its stdin and stdout are the remote command's; its
stderr starts with one line of ours, ``aioproc-pgid N``, and then carries the
remote command's stderr. ``pid`` is that remote process group id (the remote
command's own pid). Signals never go to the local client, which cannot pass
them on: they go to the guard as ``SIGNAL PGID`` lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from anyio import CancelScope, move_on_after

from .._spawn import Opener, PipeReceiveStream, PipeSendStream, Process, check_grace, open_process
from ._errors import SSHError
from ._scripts import ERROR, PGID, check_env, quote_command, wrapper_script

if TYPE_CHECKING:
    from .._spawn import FileSpec
    from ._host import Host

__all__ = ["RemoteProcess", "RemoteProcessOpener"]

_CHECK_TIMEOUT = 10.0  # seconds for `ssh -O check` once a client returned 255


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
        client: Process,
        host: Host,
        *,
        stderr_visible: bool,
        grace: float,
        deliver_cancel: Callable[[Process], Awaitable[object]] | None,
    ) -> None:
        super().__init__(args, leads_group=True, grace=grace, deliver_cancel=deliver_cancel)
        self._client = client
        self._host = host
        self._stderr_visible = stderr_visible
        self._pgid: int | None = None
        self._refusal: str | None = None  # "cwd" or "program": the wrapper refused to start
        self._noise: list[bytes] = []  # what ssh said before our first line
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
        return self._client.stdin

    @property
    def stdout(self) -> PipeReceiveStream | None:
        return self._client.stdout

    @property
    def stderr(self) -> PipeReceiveStream | None:
        return self._client.stderr if self._stderr_visible else None

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
        """Read our first line on the client's stderr: the remote pgid, or why it did not start."""
        stream = self._client.stderr
        assert stream is not None
        while self._pgid is None and self._refusal is None:
            line = await stream._readline()
            if not line:
                return
            if line.startswith(PGID):
                self._pgid = int(line[len(PGID) :])
            elif line.startswith(ERROR):
                self._refusal = line[len(ERROR) :].strip().decode()
            else:
                self._noise.append(line)

    async def _abort(self) -> None:
        """Stop a command whose start was interrupted, and release everything (shielded)."""
        with CancelScope(shield=True):
            if self._pgid is None and self._refusal is None and self._client.returncode is None:
                with move_on_after(self._grace + 1):
                    await self._handshake()
            await self.stop()

    def _noise_text(self) -> str:
        return b"".join(self._noise).decode(errors="replace")

    def _close_output(self) -> None:
        """Close our ends of the client's stdout and stderr, while stopping.

        The local client exits only once it has written out what the remote
        command sent; with nobody reading, it would block on a full pipe for
        ever, long after the remote command is gone. Closed, its writes fail and
        it exits. (A local child needs none of this: a signal ends it anyway.)
        """
        for stream in (self._client.stdout, self._client.stderr):
            if stream is not None:
                stream.close()

    async def _stop(self, grace: float) -> BaseException | None:
        self._stopping = True
        if self._deliver_cancel is None:
            self._close_output()  # what is left unread is dropped by a stop in any case
        return await super()._stop(grace)

    # -- the mechanism Process asks for -----------------------------------------------------

    async def _wait_for_exit(self) -> None:
        if self._returncode is not None:
            return
        await self._client._wait_for_exit()
        if self._returncode is not None:
            return
        returncode = self._client.returncode
        assert returncode is not None
        host = self._host
        if self._pgid is None:
            self._error = SSHError(
                host.destination, "the command could not be started", self._noise_text()
            )
        elif returncode < 0:
            # The local client was killed (not by us): the remote command would
            # run on unseen, so the guard stops its group.
            host._send_to_guard(signal.SIGKILL, self._pgid)
            self._error = SSHError(
                host.destination, f"the local ssh client was killed by signal {-returncode}"
            )
        elif returncode == 255:
            with CancelScope(shield=True), move_on_after(_CHECK_TIMEOUT):
                alive = False
                alive = await host.is_alive()
            if not alive:
                self._error = SSHError(
                    host.destination,
                    f"the connection was lost while running {self.args!r}",
                    host._master_stderr(),
                )
            elif self._last_signal is not None:
                # ssh reports a remote death by signal as 255; the signal was ours.
                returncode = -self._last_signal
        self._returncode = returncode

    def _signal(self, sig: int, group: bool) -> None:
        if self._pgid is None:
            # Not started (or not known yet): the local client is all there is.
            if self._client.returncode is None:
                self._client._signal(signal.SIGKILL, False)
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
        self._client._close_streams()
        self._client._release()
        self._host._slots.release()


def _local_stderr(stderr: FileSpec) -> tuple[str, int | None]:
    """The remote redirection for ``stderr``, and the local fd to copy it to (None: no copy)."""
    if stderr == subprocess.PIPE:
        return "", None
    if stderr == subprocess.DEVNULL:
        return "2>/dev/null", None
    if stderr == subprocess.STDOUT:
        return "2>&1", None
    if stderr is None:
        return "", 2
    if isinstance(stderr, bool) or not isinstance(stderr, int):
        fileno = getattr(stderr, "fileno", None)
        if fileno is None:
            raise TypeError(
                f"stderr must be PIPE, DEVNULL, STDOUT, an fd, a file or None, not {stderr!r}"
            )
        return "", int(fileno())
    if stderr < 0:
        raise ValueError(f"stderr must be a valid fd, not {stderr!r}")
    return "", stderr


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
        if stdin == subprocess.STDOUT or stdout == subprocess.STDOUT:
            which = "stdin" if stdin == subprocess.STDOUT else "stdout"
            raise ValueError(f"STDOUT is only valid for stderr, not for {which}")
        redirect, copy_to = _local_stderr(stderr)
        guard_dir = host._require_open()
        wrapper = wrapper_script(
            command_line, program, guard_dir=guard_dir, cwd=self._cwd, env=env, stderr=redirect
        )
        await host._slots.acquire()
        try:
            client = await open_process(
                host._session_args(wrapper), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE
            )
        except BaseException:
            host._slots.release()
            raise
        process = RemoteProcess(
            self._command,
            client,
            host,
            stderr_visible=stderr == subprocess.PIPE,
            grace=grace,
            deliver_cancel=self._deliver_cancel,
        )
        try:
            await process._handshake()
        except BaseException:
            await process._abort()
            raise
        if process._pgid is None:
            await process._abort()
            raise _refusal_error(process, self._cwd)
        if copy_to is not None:
            host._copy_stderr(client, copy_to)
        return process


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
