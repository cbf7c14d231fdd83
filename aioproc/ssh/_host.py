"""``connect``: one master connection per host, and the :class:`Host` that runs commands through it.

The master is ``ssh -M -S CTL`` started as our own child with ``die_with_parent``,
its control socket in a private 0700 directory under ``/tmp`` (ControlPath must
stay under 104 bytes). Its own session runs the guard (see ``_scripts``). Every
command is a session asked of the master on its control socket (``_mux``): no
other ssh process runs, and there is no client that could fall back to a fresh
login if the master refused. Commands queue at ``max_sessions`` so that the
server's MaxSessions (default 10, one of which is the guard's) is never reached.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio import CancelScope, move_on_after

from .._backends import current_backend
from .._spawn import PipeReceiveStream, Process, check_grace, open_process
from . import _mux
from ._errors import SSHError
from ._process import RemoteProcess, RemoteProcessOpener
from ._scripts import READY, check_env, guard_script, prelude, quote_command

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from .._spawn import FileSpec

__all__ = ["Host", "RemoteDetached", "connect"]

SSH = "ssh"
_STDERR_KEPT = 8192  # bytes of the master's stderr kept for error messages


@dataclass(frozen=True)
class RemoteDetached:
    """A command started by :meth:`Host.detach`: it runs on ``destination`` as ``pid``."""

    destination: str
    pid: int
    args: Any


@asynccontextmanager
async def connect(
    destination: str,
    *,
    port: int | None = None,
    user: str | None = None,
    identity: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
    ssh_options: Mapping[str, str] | None = None,
    max_sessions: int = 8,
    connect_timeout: float = 30.0,
    grace: float = 5.0,
) -> AsyncIterator[Host]:
    """Open one master connection to ``destination`` (``[user@]host``) and yield its :class:`Host`.

    ``port``, ``user``, ``identity`` (a private key file) and ``config`` (an
    ssh_config file, ``ssh -F``) are passed to ``ssh``, and ``ssh_options`` as
    ``-o KEY=VALUE`` each. BatchMode is always on: ssh never prompts, it fails.
    ``connect_timeout`` bounds the whole login. At most ``max_sessions``
    commands run at once through the connection; more wait for a free session
    (keep it below the server's MaxSessions, 10 by default, which also counts
    the guard's session). ``grace`` is how long the guard waits between SIGTERM
    and SIGKILL for the remote commands still running when the connection
    ends, whether the block ends, we die or the connection drops.

    Leaving the block stops what is still running there and closes the
    connection. :class:`SSHError` says why a connection failed.
    """
    if not isinstance(destination, str) or not destination or destination.startswith("-"):
        raise ValueError(f"destination must be a host name, as [user@]host, not {destination!r}")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
    ):
        raise ValueError(f"port must be an int from 1 to 65535, not {port!r}")
    if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
        raise ValueError(f"max_sessions must be a positive int, not {max_sessions!r}")
    if (
        isinstance(connect_timeout, bool)
        or not isinstance(connect_timeout, (int, float))
        or not connect_timeout > 0
    ):
        raise ValueError(
            f"connect_timeout must be a positive number of seconds, not {connect_timeout!r}"
        )
    grace = check_grace(grace)
    options: list[str] = []
    for key, value in (ssh_options or {}).items():
        if (
            not isinstance(key, str)
            or not key.isalnum()
            or not isinstance(value, str)
            or "\n" in value
        ):
            raise ValueError(
                f"ssh_options must map option names to str values, not {key!r}: {value!r}"
            )
        options += ["-o", f"{key}={value}"]
    common = _login_arguments(port, user, identity, config)
    if shutil.which(SSH) is None:
        raise FileNotFoundError(f"the OpenSSH client {SSH!r} is not installed")
    async with _connected(
        destination, common, options, max_sessions, connect_timeout, grace
    ) as host:
        yield host


def _login_arguments(
    port: int | None,
    user: str | None,
    identity: str | os.PathLike[str] | None,
    config: str | os.PathLike[str] | None,
) -> list[str]:
    common = ["-o", "BatchMode=yes"]
    if config is not None:
        if not os.path.exists(config):
            raise FileNotFoundError(f"no such ssh config file: {os.fsdecode(config)!r}")
        common += ["-F", os.fsdecode(config)]
    if port is not None:
        common += ["-p", str(port)]
    if user is not None:
        common += ["-l", user]
    if identity is not None:
        if not os.path.exists(identity):
            raise FileNotFoundError(f"no such identity file: {os.fsdecode(identity)!r}")
        common += ["-i", os.fsdecode(identity), "-o", "IdentitiesOnly=yes"]
    return common


@asynccontextmanager
async def _connected(
    destination: str,
    common: list[str],
    options: list[str],
    max_sessions: int,
    connect_timeout: float,
    grace: float,
) -> AsyncIterator[Host]:
    directory = tempfile.mkdtemp(prefix="aioproc-ssh-", dir="/tmp")
    try:
        control = os.path.join(directory, "c")
        host = Host(destination, control, max_sessions, grace)
        master_args = [
            SSH,
            "-M",
            "-S",
            control,
            *common,
            *options,
            "-o",
            "ControlPersist=no",
            "-o",
            f"ConnectTimeout={max(1, round(connect_timeout))}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            "RemoteCommand=none",
            "-o",
            "LogLevel=ERROR",
            "-T",
            "-x",
            "-e",
            "none",
            destination,
            guard_script(grace),
        ]
        master = await open_process(master_args, die_with_parent=True, start_new_session=True)
        try:
            await host._start(master, connect_timeout)
            yield host
        finally:
            with CancelScope(shield=True):
                await host._close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class Host:
    """A connected host: runs commands through its master connection. Made by :func:`connect`."""

    def __init__(self, destination: str, control: str, max_sessions: int, grace: float) -> None:
        self.destination = destination
        """The host as given to :func:`connect`."""
        self.control_path = control
        """The master's control socket: ``ssh -S`` this to use the connection yourself."""
        self.max_sessions = max_sessions
        self._grace = grace
        self._slots = anyio.Semaphore(max_sessions)
        # Slots of commands dropped unclosed: a finalizer may not touch the semaphore
        # (it may run inside any call), so it appends here (atomic), and the next
        # command gives them back first.
        self._dropped: deque[None] = deque()
        self._master: Process | None = None
        self._guard_dir: str | None = None
        self._stderr = bytearray()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Host {self.destination!r}{' closed' if self._closed else ''}>"

    # -- the connection -----------------------------------------------------------------

    async def _start(self, master: Process, connect_timeout: float) -> None:
        self._master = master
        assert master.stdout is not None
        assert master.stdin is not None
        # Lines to the guard are written without awaiting: never block the loop on them.
        os.set_blocking(master.stdin._fd, False)  # type: ignore[attr-defined]
        stderr = master.stderr
        assert stderr is not None
        current_backend().spawn_system_task(lambda: self._keep_stderr(stderr), stderr.close)
        with move_on_after(connect_timeout) as timer:
            async for line in master.stdout.lines():
                text = line.decode(errors="replace").rstrip("\n")
                if text.startswith(READY):
                    self._guard_dir = text[len(READY) :]
                    return
            await master.wait()
        # Failed: let the stderr reader take what ssh said, then report it.
        with CancelScope(shield=True):
            if master.returncode is None:
                master.kill()
            await master.wait()
            with move_on_after(1):
                while not stderr.closed:  # noqa: ASYNC110 - the reader closes it at EOF
                    await anyio.sleep(0.01)
        what = "timed out" if timer.cancelled_caught else "could not connect"
        if not timer.cancelled_caught and master.returncode not in (255, None):
            what = f"could not start the guard (exit status {master.returncode})"
        raise SSHError(self.destination, what, self._master_stderr())

    async def _keep_stderr(self, stream: Any) -> None:
        try:
            async for chunk in stream:
                self._stderr += chunk
                del self._stderr[:-_STDERR_KEPT]
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def _master_stderr(self) -> str:
        return self._stderr.decode(errors="replace")

    async def _close(self) -> None:
        """Close the guard's stdin: it stops what is left, then the master exits."""
        self._closed = True
        master = self._master
        if master is None:
            return
        if master.stdin is not None:
            master.stdin.close()
        with move_on_after(self._grace + 5):
            await master.wait()
        await master.stop(grace=1)

    async def _take_slot(self) -> None:
        while self._dropped:
            self._dropped.popleft()
            self._slots.release()
        await self._slots.acquire()

    def _require_open(self) -> str:
        if self._closed or self._guard_dir is None:
            raise RuntimeError(f"the connection to {self.destination!r} is closed")
        return self._guard_dir

    def _send_to_guard(self, sig: int, pgid: int) -> None:
        master = self._master
        stdin = None if master is None else master.stdin
        if stdin is None or stdin.closed:
            return
        # The guard is gone if this fails: then it stopped every group already, or does so.
        with contextlib.suppress(OSError):
            os.write(stdin._fd, f"{int(sig)} {int(pgid)}\n".encode())  # type: ignore[attr-defined]

    def _copy_stderr(self, stream: PipeReceiveStream, fd: int) -> None:
        target = os.dup(fd)

        def done() -> None:
            os.close(target)
            stream.close()

        current_backend().spawn_system_task(lambda: _copy(stream, target), done)

    async def is_alive(self) -> bool:
        """Whether the master connection is up (what ``ssh -O check`` asks it)."""
        if self._master is None or self._master.returncode is not None:
            return False
        return await _mux.alive(self.control_path)

    # -- commands -----------------------------------------------------------------------

    def open_process(
        self,
        command: str | bytes | os.PathLike[str] | Sequence[str | bytes | os.PathLike[str]],
        *,
        stdin: FileSpec = subprocess.PIPE,
        stdout: FileSpec = subprocess.PIPE,
        stderr: FileSpec = subprocess.PIPE,
        cwd: str | bytes | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        grace: float = 5.0,
        deliver_cancel: Callable[[Process], Awaitable[object]] | None = None,
    ) -> RemoteProcessOpener:
        """Start ``command`` on this host, as :func:`aioproc.open_process` does locally.

        A str runs through the remote ``/bin/sh -c``; a sequence runs directly,
        every argument quoted for the remote shell. ``cwd`` and ``env`` apply on
        the remote host; ``env`` adds to the login environment there. ``stdin``,
        ``stdout`` and ``stderr`` are local: PIPE, DEVNULL, STDOUT (stderr),
        an fd, a file, or None. Signals and the stop sequence reach the remote
        command's whole process group. A missing program or ``cwd`` raises
        ``FileNotFoundError``.
        """
        return RemoteProcessOpener(
            self,
            command,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=env,
            grace=grace,
            deliver_cancel=deliver_cancel,
        )

    async def run_process(
        self,
        command: str | bytes | os.PathLike[str] | Sequence[str | bytes | os.PathLike[str]],
        *,
        input: bytes | bytearray | memoryview | None = None,
        stdin: FileSpec = None,
        stdout: FileSpec = subprocess.PIPE,
        stderr: FileSpec = subprocess.PIPE,
        check: bool = True,
        timeout: float | None = None,  # noqa: ASYNC109 - subprocess.run's argument
        cwd: str | bytes | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        grace: float = 5.0,
        deliver_cancel: Callable[[Process], Awaitable[object]] | None = None,
        task_status: TaskStatus[RemoteProcess] = anyio.TASK_STATUS_IGNORED,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``command`` on this host to completion, as :func:`aioproc.run_process` does locally.

        ``stdin`` defaults to DEVNULL-like ``None`` (ours); with ``input`` it is a
        pipe. ``timeout`` and cancellation stop the remote command (SIGTERM,
        ``grace``, SIGKILL to its group). Raises :class:`SSHError` if the
        connection is lost.
        """
        if input is not None:
            if stdin is not None:
                raise ValueError("only one of stdin and input is allowed")
            if not isinstance(input, (bytes, bytearray, memoryview)):
                raise TypeError(f"input must be bytes, not {type(input).__name__}")
            stdin = subprocess.PIPE
        elif stdin is None:
            stdin = subprocess.DEVNULL
        with move_on_after(timeout) as timer:
            async with self.open_process(
                command,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                cwd=cwd,
                env=env,
                grace=grace,
                deliver_cancel=deliver_cancel,
            ) as process:
                task_status.started(process)
                output, errors = await process._communicate(input, feed_stdin=input is not None)
        if timer.cancelled_caught:
            assert timeout is not None
            output = None if process.stdout is None else process.stdout._take_pending()
            errors = None if process.stderr is None else process.stderr._take_pending()
            raise subprocess.TimeoutExpired(command, timeout, output=output, stderr=errors)
        returncode = process.returncode
        assert returncode is not None
        if check and returncode != 0:
            raise subprocess.CalledProcessError(returncode, command, output, errors)
        return subprocess.CompletedProcess(command, returncode, output, errors)

    async def detach(
        self,
        command: str | bytes | os.PathLike[str] | Sequence[str | bytes | os.PathLike[str]],
        *,
        stdout: str = "/dev/null",
        stderr: str | None = None,
        cwd: str | bytes | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RemoteDetached:
        """Start ``command`` on this host so that it outlives the connection; return its remote pid.

        It runs under ``nohup setsid`` in a session of its own, with stdin from
        ``/dev/null`` and stdout appended to the remote file ``stdout``
        (``stderr`` too, unless given a file of its own). The guard leaves it
        alone.
        """
        command_line, program = quote_command(command)
        checked_env = None if env is None else check_env(env)
        for name, value in (("stdout", stdout), ("stderr", stderr)):
            if value is not None and (not isinstance(value, str) or not value or "\0" in value):
                raise ValueError(f"{name} must be a remote file name, not {value!r}")
        errors = "2>&1" if stderr is None else f"2>>{shlex.quote(stderr)}"
        check = "command -v setsid >/dev/null 2>&1 || { echo 'setsid: not found' >&2; exit 127; }; "
        if program is not None:
            check += (
                f"command -v -- {shlex.quote(program)} >/dev/null 2>&1 || "
                "{ echo 'aioproc-error program' >&2; exit 127; }; "
            )
        # The command reports its own pid once setsid() has made it a session of its
        # own, on fd 3 (our stdout), and closes that fd: our read ends then, never
        # before. Reported earlier (`& echo $!`), the connection could close, and the
        # guard stop the wrapper's process group, while the command was still in it.
        inner = f"echo $$ >&3; exec 3>&-; exec {command_line}"
        script = (
            prelude(cwd, checked_env)
            + check
            + f"nohup setsid /bin/sh -c {shlex.quote(inner)} 3>&1 </dev/null"
            + f" >>{shlex.quote(stdout)} {errors} &"
        )
        result = await self.run_process(script, check=False)
        err = (result.stderr or b"").decode(errors="replace")
        if "aioproc-error cwd" in err:
            raise FileNotFoundError(f"{self.destination}: no such directory (cwd): {cwd!r}")
        if "aioproc-error program" in err:
            raise FileNotFoundError(f"{self.destination}: no such program: {program!r}")
        if result.returncode != 0 or not result.stdout.strip().isdigit():
            raise OSError(f"{self.destination}: could not detach {command!r}: {err.strip()}")
        return RemoteDetached(self.destination, int(result.stdout), command)


async def _copy(stream: Any, fd: int) -> None:
    """Copy a remote command's stderr to ``fd`` (a dup of ours or the user's) until EOF."""
    try:
        async for chunk in stream:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        pass
