"""``run_process``: run a command to completion and capture its output, like ``subprocess.run``."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from anyio import TASK_STATUS_IGNORED, create_task_group, move_on_after

from ._open_process import Engine, open_process
from ._process import _feed
from ._pty import STDERR_DEFAULT
from ._streams import PendingInput

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from ._process import Process
    from ._pty import Pty
    from ._request import FileSpec, StrOrBytesPath
    from ._streams import PipeReceiveStream, PipeSendStream

__all__ = ["run_process"]

_PIPE = subprocess.PIPE


class _Captured(int):
    """The default of ``stdout``: a pipe that ``run_process`` reads (``stderr``'s is
    ``STDERR_DEFAULT``, told apart the same way).

    It equals ``PIPE`` everywhere; only ``run_process`` tells it apart from a
    ``PIPE`` the caller asked for by name, which under ``TaskGroup.start()``
    goes to the caller instead.
    """

    def __repr__(self) -> str:
        return "PIPE"


_CAPTURED: Final = _Captured(_PIPE)


def _is_pipe(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value == _PIPE


def _check_timeout(timeout: object) -> float | None:
    """``None`` or a number of seconds; ``inf`` waits forever, ``<= 0`` is already past."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}: "
            f"{timeout!r}"
        )
    if math.isnan(timeout):
        raise ValueError(f"timeout must be a number of seconds or None, not {timeout!r}")
    return float(timeout)


async def run_process(
    command: StrOrBytesPath | Sequence[StrOrBytesPath],
    *,
    input: bytes | bytearray | memoryview | None = None,
    stdin: FileSpec = None,
    stdout: FileSpec = _CAPTURED,
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
    read so far. ``timeout`` is ``None`` (no limit), ``math.inf`` (the same) or a
    number of seconds: one ``<= 0`` is already over, and the child is not
    started.

    Started with ``TaskGroup.start()``, it hands the :class:`Process` to the
    caller as soon as the child runs. Each stream the caller asked for by name
    (``stdin=PIPE``, ``stdout=PIPE``, ``stderr=PIPE``) is then the caller's:
    ``run_process`` neither reads nor writes nor closes it (close it, or
    ``await process.aclose()``, when done), and the result holds ``None`` for
    it. Output not asked for by name is still captured. Awaited directly,
    ``stdin=PIPE`` is refused, since nobody could write to it: pass ``input``.

    The other arguments are those of :func:`open_process`. With ``pty=``, the
    output is the terminal's (CRLF line ends, stderr in it) and ``input`` is
    typed, then the EOF character.
    """
    seconds = _check_timeout(timeout)
    started = task_status is not TASK_STATUS_IGNORED
    if input is not None:
        if stdin is not None:
            raise ValueError("only one of stdin and input is allowed")
        if not isinstance(input, (bytes, bytearray, memoryview)):
            raise TypeError(f"input must be bytes, not {type(input).__name__}")
        stdin = _PIPE
    elif _is_pipe(stdin) and not started:
        raise ValueError(
            "stdin=PIPE is only valid with TaskGroup.start(), since that is the only way "
            "to reach the pipe; use TaskGroup.start() or pass the data to write as input="
        )
    # The streams asked for by name under start(): the caller's, not ours.
    theirs = {
        name
        for name, value in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr))
        if started and _is_pipe(value) and value is not _CAPTURED and value is not STDERR_DEFAULT
    }
    if input is not None:
        theirs.discard("stdin")
    process: Process | None = None
    with move_on_after(seconds) as timer:
        process = await open_process(
            command,
            stdin=stdin,
            stdout=_PIPE if stdout is _CAPTURED else stdout,
            stderr=stderr,  # STDERR_DEFAULT: a pipe, or the terminal with pty=
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
        )
        kept = [getattr(process, name) for name in theirs]
        try:
            task_status.started(process)
            if kept:
                output, errors = await _capture_beside_caller(process, input, kept)
            else:
                output, errors = await process._communicate(input, feed_stdin=input is not None)
        except BaseException:
            await process.stop()
            raise
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None and stream not in kept:
                stream.close()
        process._release()

    if timer.cancelled_caught:
        assert timeout is not None
        output = errors = None
        if process is not None:
            # What was read before the timeout stays in the streams (see communicate()).
            if process.stdout is not None and "stdout" not in theirs:
                output = process.stdout._take_pending()
            if process.stderr is not None and "stderr" not in theirs:
                errors = process.stderr._take_pending()
        raise subprocess.TimeoutExpired(command, timeout, output=output, stderr=errors)
    assert process is not None
    returncode = process.returncode
    assert returncode is not None
    if check and returncode != 0:
        raise subprocess.CalledProcessError(returncode, command, output, errors)
    return subprocess.CompletedProcess(command, returncode, output, errors)


async def _capture_beside_caller(
    process: Process,
    input: bytes | bytearray | memoryview | None,
    kept: list[PipeSendStream | PipeReceiveStream | None],
) -> tuple[bytes | None, bytes | None]:
    """Feed ``input`` and capture the output streams not in ``kept`` (the caller's), and
    wait for the exit; like ``trio.run_process`` under ``nursery.start``."""
    captured: dict[str, bytes] = {}

    async def read_all(name: str, stream: PipeReceiveStream) -> None:
        captured[name] = await stream.read_all()

    async with create_task_group() as tg:
        if input is not None and process.stdin is not None:
            tg.start_soon(_feed, process.stdin, PendingInput(input))
        for name, stream in (("stdout", process.stdout), ("stderr", process.stderr)):
            if stream is not None and stream not in kept:
                tg.start_soon(read_all, name, stream)
        await process.wait()
    return captured.get("stdout"), captured.get("stderr")
