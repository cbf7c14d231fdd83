"""``run_process``: run a command to completion and capture its output, like ``subprocess.run``."""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from anyio import TASK_STATUS_IGNORED, move_on_after

from ._open_process import Engine, open_process
from ._pty import STDERR_DEFAULT

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from ._process import Process
    from ._pty import Pty
    from ._request import FileSpec, StrOrBytesPath

__all__ = ["run_process"]


async def run_process(
    command: StrOrBytesPath | Sequence[StrOrBytesPath],
    *,
    input: bytes | bytearray | memoryview | None = None,
    stdin: FileSpec = None,
    stdout: FileSpec = subprocess.PIPE,
    stderr: FileSpec = STDERR_DEFAULT,
    check: bool = True,
    timeout: float | None = None,  # noqa: ASYNC109 - subprocess.run's argument, kept for drop-in use
    cwd: StrOrBytesPath | None = None,
    env: Mapping[str, str] | None = None,
    startupinfo: Any = None,
    creationflags: int = 0,
    start_new_session: bool = False,
    pass_fds: Sequence[int] = (),
    user: str | int | None = None,
    group: str | int | None = None,
    extra_groups: Iterable[str | int] | None = None,
    umask: int = -1,
    process_group: int | None = None,
    die_with_parent: bool | int = False,
    grace: float = 5.0,
    deliver_cancel: Callable[[Process], Awaitable[object]] | None = None,
    engine: Engine | None = None,
    pty: bool | Pty = False,
    task_status: TaskStatus[Process] = TASK_STATUS_IGNORED,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``command``, feed it ``input``, and return its exit status and captured output.

    stdout and stderr are captured unless told otherwise, and read while
    ``input`` is written, so neither side can fill a pipe and deadlock. With
    ``check=True`` (the default) a nonzero exit raises
    ``subprocess.CalledProcessError`` carrying ``stdout`` and ``stderr``.

    If ``timeout`` seconds pass, or the caller is cancelled, the child is
    stopped as :func:`open_process` stops it (SIGTERM, ``grace``, SIGKILL) and
    reaped; a timeout then raises ``subprocess.TimeoutExpired`` with the output
    read so far. Started with ``TaskGroup.start()``, it hands the
    :class:`Process` to the caller as soon as the child runs.

    The other arguments are those of :func:`open_process`. With ``pty=``, the
    output is the terminal's (CRLF line ends, stderr in it) and ``input`` is
    typed, then the EOF character.
    """
    if input is not None:
        if stdin is not None:
            raise ValueError("only one of stdin and input is allowed")
        if not isinstance(input, (bytes, bytearray, memoryview)):
            raise TypeError(f"input must be bytes, not {type(input).__name__}")
        stdin = subprocess.PIPE
    with move_on_after(timeout) as timer:
        async with open_process(
            command,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=env,
            startupinfo=startupinfo,
            creationflags=creationflags,
            start_new_session=start_new_session,
            pass_fds=pass_fds,
            user=user,
            group=group,
            extra_groups=extra_groups,
            umask=umask,
            process_group=process_group,
            die_with_parent=die_with_parent,
            grace=grace,
            deliver_cancel=deliver_cancel,
            engine=engine,
            pty=pty,
        ) as process:
            task_status.started(process)
            output, errors = await process._communicate(input, feed_stdin=input is not None)

    if timer.cancelled_caught:
        assert timeout is not None
        # What was read before the timeout stays in the streams (see communicate()).
        output = None if process.stdout is None else process.stdout._take_pending()
        errors = None if process.stderr is None else process.stderr._take_pending()
        raise subprocess.TimeoutExpired(command, timeout, output=output, stderr=errors)
    returncode = process.returncode
    assert returncode is not None
    if check and returncode != 0:
        raise subprocess.CalledProcessError(returncode, command, output, errors)
    return subprocess.CompletedProcess(command, returncode, output, errors)
