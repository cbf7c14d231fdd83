"""``run_process``: run a command to completion and capture its output, like ``subprocess.run``."""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from anyio import TASK_STATUS_IGNORED, BrokenResourceError, create_task_group, move_on_after

from ._open_process import Engine, open_process

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from ._process import Process
    from ._spawn import FileSpec, StrOrBytesPath
    from ._streams import PipeReceiveStream, PipeSendStream

__all__ = ["run_process"]


async def run_process(
    command: StrOrBytesPath | Sequence[StrOrBytesPath],
    *,
    input: bytes | bytearray | memoryview | None = None,
    stdin: FileSpec = None,
    stdout: FileSpec = subprocess.PIPE,
    stderr: FileSpec = subprocess.PIPE,
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
    grace: float = 5.0,
    deliver_cancel: Callable[[Process], Awaitable[object]] | None = None,
    engine: Engine | None = None,
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

    The other arguments are those of :func:`open_process`.
    """
    if input is not None:
        if stdin is not None:
            raise ValueError("only one of stdin and input is allowed")
        if not isinstance(input, (bytes, bytearray, memoryview)):
            raise TypeError(f"input must be bytes, not {type(input).__name__}")
        stdin = subprocess.PIPE
    captured: dict[str, list[bytes]] = {}

    async def drain(stream: PipeReceiveStream, name: str) -> None:
        chunks = captured[name] = []
        async for chunk in stream:
            chunks.append(chunk)

    async def feed(stream: PipeSendStream, data: bytes | bytearray | memoryview) -> None:
        # A child may exit without reading all its input; communicate() ignores
        # that too.
        try:
            await stream.send(data)  # type: ignore[arg-type]
        except BrokenResourceError:
            pass
        finally:
            await stream.aclose()

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
            grace=grace,
            deliver_cancel=deliver_cancel,
            engine=engine,
        ) as process:
            task_status.started(process)
            async with create_task_group() as tg:
                if process.stdin is not None and input is not None:
                    tg.start_soon(feed, process.stdin, input)
                if process.stderr is not None:
                    tg.start_soon(drain, process.stderr, "stderr")
                if process.stdout is not None:
                    await drain(process.stdout, "stdout")
                await process.wait()

    output = b"".join(captured["stdout"]) if "stdout" in captured else None
    errors = b"".join(captured["stderr"]) if "stderr" in captured else None
    if timer.cancelled_caught:
        assert timeout is not None
        raise subprocess.TimeoutExpired(command, timeout, output=output, stderr=errors)
    returncode = process.returncode
    assert returncode is not None
    if check and returncode != 0:
        raise subprocess.CalledProcessError(returncode, command, output, errors)
    return subprocess.CompletedProcess(command, returncode, output, errors)
