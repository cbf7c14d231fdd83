"""``pipeline``: start ``a | b | c`` with kernel pipes between the stages, and own them as one.

How the stages are wired, and why:

* Each inner pipe is made by ``os.pipe()``: blocking on both ends (a stage never
  gets a non-blocking stdin, trio#1707) and close-on-exec (no other child, and
  no other stage, inherits it). Its ends go to the two neighbours through
  ``Popen``'s ``dup2``, and the parent closes each of its copies as soon as the
  stage that uses it has started, so EOF and SIGPIPE travel as in a shell.
  The parent never reads or writes an inner pipe.
* Inner pipes are enlarged to 1 MiB where the kernel allows (a bulk stream then
  switches between the stages 16 times less often), for at most
  :data:`_MAX_LARGE_PIPES` at a time, since the kernel counts those pages
  against the user.
* Each stage gets the default SIGPIPE disposition (``Popen`` restores it), so
  ``yes | head -1`` ends with ``yes`` killed by SIGPIPE, as in a shell.
* Stage 0 leads a new process group and every other stage joins it. The leader
  is kept unreaped (a zombie, once it exits) until the whole pipeline is let
  go, because its pid is what keeps the group id from being reused: signals to
  the group stay safe, and a late stage can still join it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
from anyio import move_on_after

from .._backends import current_backend, run_to_completion
from .._spawn import (
    FdReceiveStream,
    FdSendStream,
    Opener,
    PipeReceiveStream,
    PipeSendStream,
    Process,
    check_file,
    check_grace,
    enlarge_pipe,
)
from ._stage import UNSET, Command, Stage, as_stage

if TYPE_CHECKING:
    from types import TracebackType

    from .._backends import Backend
    from .._spawn import FileSpec, SpawnRequest, StrOrBytesPath

__all__ = ["Pipeline", "PipelineOpener", "pipefail_status", "pipeline"]

_PIPE = subprocess.PIPE
_MAX_LARGE_PIPES = 16
_large_pipes = 0  # inner pipes enlarged by pipelines not yet let go
_large_pipes_lock = threading.Lock()


def pipeline(
    *commands: Command | Stage,
    stdin: FileSpec | PipeReceiveStream = _PIPE,
    stdout: FileSpec | PipeSendStream = _PIPE,
    stderr: FileSpec = _PIPE,
    pipefail: bool = True,
    cwd: StrOrBytesPath | None = None,
    env: Mapping[str, str] | None = None,
    grace: float = 5.0,
) -> PipelineOpener:
    """Start ``commands`` as a shell pipeline, each stage's stdout feeding the next one's stdin.

    Use it as :func:`aioproc.open_process` is used::

        async with aioproc.pipeline(["zcat", path], ["grep", "x"], ["wc", "-l"]) as p:
            print(await p.stdout.read_all())
        p = await aioproc.pipeline(...)  # then: await p.aclose()

    Each command is a sequence of arguments, a ``str`` run through ``/bin/sh``, or
    a :class:`Stage` with options of its own. ``stdin`` feeds the first stage and
    ``stdout`` takes the last one's output: ``PIPE`` (the default, then
    ``p.stdin`` and ``p.stdout`` are anyio streams), ``DEVNULL``, an fd, a file,
    ``None`` to inherit ours, or a stream of another aioproc process (its
    ``stdout`` as our ``stdin``, its ``stdin`` as our ``stdout``), which the
    pipeline then takes over. ``stderr`` is where every stage's stderr goes:
    ``PIPE`` merges them into ``p.stderr``; a :class:`Stage` may have its own.

    The exit status follows bash: with ``pipefail=True`` (the default) it is
    that of the rightmost stage that failed, else that of the last stage.
    ``p.returncodes`` has every stage's, as bash's ``PIPESTATUS``.

    Leaving the block normally closes our ends and waits for every stage.
    Leaving it by an exception or a cancellation stops the whole process
    group as ``open_process`` stops a child (SIGTERM, ``grace`` seconds,
    SIGKILL), then reaps every stage.
    """
    return PipelineOpener(
        commands,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        pipefail=pipefail,
        cwd=cwd,
        env=env,
        grace=grace,
    )


def pipefail_status(returncodes: list[int], pipefail: bool) -> int:
    """Bash's status of a pipeline: the rightmost nonzero one, or with pipefail off the last."""
    if pipefail:
        return next((code for code in reversed(returncodes) if code != 0), 0)
    return returncodes[-1]


class Pipeline:
    """A running pipeline: its stages as processes, its two ends as anyio streams."""

    def __init__(
        self,
        commands: tuple[Command, ...],
        *,
        pipefail: bool,
        grace: float,
    ) -> None:
        self.args = commands
        """The stages' commands, as they were given."""
        self.pipefail = pipefail
        self._grace = grace
        self._stages: list[Process] = []
        self._stdin: PipeSendStream | None = None
        self._stdout: PipeReceiveStream | None = None
        self._stderr: PipeReceiveStream | None = None
        self._large_pipes = 0  # of the inner pipes, how many were enlarged
        self._released = False

    def __repr__(self) -> str:
        return f"<Pipeline pids={self.pids} returncodes={self.returncodes}>"

    @property
    def stages(self) -> tuple[Process, ...]:
        """Each stage as a :class:`Process` (its ``pid``, ``returncode``, own ``stderr``).

        The pipeline owns them: stop or close the pipeline, not a stage (stage 0
        anchors the group until the pipeline lets it go).
        """
        return tuple(self._stages)

    @property
    def pids(self) -> list[int]:
        """The stages' pids; the first is also the id of their process group."""
        return [stage.pid for stage in self._stages]

    @property
    def pgid(self) -> int:
        """The process group of every stage, led by stage 0."""
        return self._stages[0].pid

    @property
    def stdin(self) -> PipeSendStream | None:
        """The first stage's stdin, if ``stdin=PIPE``."""
        return self._stdin

    @property
    def stdout(self) -> PipeReceiveStream | None:
        """The last stage's stdout, if ``stdout=PIPE``."""
        return self._stdout

    @property
    def stderr(self) -> PipeReceiveStream | None:
        """Every stage's stderr in one stream, if ``stderr=PIPE`` (stages with their own aside)."""
        return self._stderr

    @property
    def returncodes(self) -> list[int | None]:
        """Each stage's return code (``None`` while it runs, ``-N`` if killed by signal N)."""
        return [stage.returncode for stage in self._stages]

    @property
    def returncode(self) -> int | None:
        """The pipeline's status, as bash's ``$?``: ``None`` until every stage has exited."""
        codes = self.returncodes
        if any(code is None for code in codes):
            return None
        return pipefail_status(codes, self.pipefail)  # type: ignore[arg-type]

    async def wait(self) -> int:
        """Wait for every stage to exit; return the pipeline's status (see :attr:`returncode`)."""
        for stage in self._stages:
            await stage.wait()
        returncode = self.returncode
        assert returncode is not None
        return returncode

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process group of every stage (nothing once it is let go)."""
        if self._stages and not self._released:
            self._stages[0].send_signal(sig, group=True)

    def terminate(self) -> None:
        """Send SIGTERM to every stage."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL to every stage."""
        self.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        """Close our ends, wait for every stage to exit, and let them go.

        If this is cancelled while waiting, the stages are stopped as by
        :meth:`stop`, and reaped, before the cancellation goes on.
        """
        self._close_streams()
        try:
            for stage in self._stages:
                if stage.returncode is None:
                    await stage.wait()
        except BaseException:
            await self.stop()
            raise
        self._release()

    async def stop(self, grace: float | None = None) -> None:
        """Stop every stage now, and reap them: what leaving ``async with`` by an error does.

        stdin is closed, the group gets SIGTERM, and ``grace`` seconds later
        (default: the ``grace`` given to ``pipeline``) every stage still running
        gets SIGKILL, and the group too. Once every stage is gone, whatever is
        left of the group gets SIGKILL. It is shielded from cancellation, even
        from asyncio's own ``Task.cancel()``: that one is raised once the
        stages are reaped.
        """
        grace = self._grace if grace is None else check_grace(grace)
        await run_to_completion(lambda: self._stop(grace))

    async def _stop(self, grace: float) -> None:
        try:
            if self._stdin is not None:
                self._stdin.close()
            if self._running():
                self.send_signal(signal.SIGTERM)
                with move_on_after(grace):
                    await self._wait_all()
                if self._running():
                    self.send_signal(signal.SIGKILL)
                    for stage in self._stages:  # a stage that left the group, too
                        stage.kill()
                    await self._wait_all()
            self.send_signal(signal.SIGKILL)
        finally:
            self._close_streams()
            self._release()

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.aclose()
        else:
            await self.stop()

    # -- internals --------------------------------------------------------------------

    def _running(self) -> bool:
        return any(stage.returncode is None for stage in self._stages)

    async def _wait_all(self) -> None:
        for stage in self._stages:
            await stage.wait()

    def _close_streams(self) -> None:
        for stream in (self._stdin, self._stdout, self._stderr):
            if stream is not None:
                stream.close()
        for stage in self._stages:
            if stage.stderr is not None:
                stage.stderr.close()

    def _release(self) -> None:
        """Let every stage go, the group's leader last (it anchors the group id).

        A stage still running (only if stop() was interrupted) is left to the
        child watcher's orphan list, which reaps it later.
        """
        if self._released:
            return
        self._released = True
        for stage in reversed(self._stages):
            stage._release()
        self._forget_large_pipes()

    def _forget_large_pipes(self) -> None:
        global _large_pipes
        if self._large_pipes:
            with _large_pipes_lock:
                _large_pipes -= self._large_pipes
            self._large_pipes = 0

    def __del__(self) -> None:
        # Each stage's Process warns for itself if it was dropped while running.
        if getattr(self, "_large_pipes", 0):
            self._forget_large_pipes()


class PipelineOpener(Opener[Pipeline]):
    """What :func:`pipeline` returns: await it, or use it with ``async with``."""

    __slots__ = ("_commands", "_options")

    def __init__(self, commands: tuple[Command | Stage, ...], **options: Any) -> None:
        super().__init__()
        self._commands = commands
        self._options = options

    async def _open(self) -> Pipeline:
        return await _start(self._commands, **self._options)


async def _start(
    commands: tuple[Command | Stage, ...],
    *,
    stdin: FileSpec | PipeReceiveStream,
    stdout: FileSpec | PipeSendStream,
    stderr: FileSpec,
    pipefail: bool,
    cwd: StrOrBytesPath | None,
    env: Mapping[str, str] | None,
    grace: float,
) -> Pipeline:
    # Every check comes before the first spawn: bad input starts nothing.
    if not commands:
        raise ValueError("a pipeline needs at least one command")
    if not isinstance(pipefail, bool):
        raise TypeError(f"pipefail must be True or False, not {pipefail!r}")
    grace = check_grace(grace)
    stages = [as_stage(command, index) for index, command in enumerate(commands)]
    check_file("stderr", stderr, "PIPE, DEVNULL, STDOUT, a file descriptor, a file object")
    requests = [
        stage._request(index, stderr=stderr, cwd=cwd, env=env) for index, stage in enumerate(stages)
    ]
    first_stdin = _end("stdin", stdin, FdReceiveStream, "the stdout")
    last_stdout = _end("stdout", stdout, FdSendStream, "the stdin")
    backend = current_backend()
    await backend.checkpoint_if_cancelled()
    # From here on nothing awaits until the pipeline exists, or has been undone.
    started = Pipeline(tuple(stage.command for stage in stages), pipefail=pipefail, grace=grace)
    held: list[int] = []  # our fds, closed whatever happens
    try:
        merged = -1
        if stderr == _PIPE:
            merged, merged_write = _pipe(held)
            for stage, request in zip(stages, requests, strict=True):
                if stage.stderr is UNSET:
                    request.stderr = merged_write
        _spawn_all(started, stages, requests, first_stdin, last_stdout, backend, held)
        if merged >= 0:
            started._stderr = FdReceiveStream(merged, backend)
            held.remove(merged)
            _in_flight.discard(merged)  # the stream holds it now (and closes it at fork)
    except BaseException:
        _close_all(held)
        await started.stop()
        raise
    finally:
        for end in (stdin, stdout):
            if isinstance(end, (FdReceiveStream, FdSendStream)):
                end.close()  # handed over: the stage has its own copy now
    _close_all(held)
    return started


def _spawn_all(
    started: Pipeline,
    stages: list[Stage],
    requests: list[SpawnRequest],
    first_stdin: FileSpec,
    last_stdout: FileSpec,
    backend: Backend,
    held: list[int],
) -> None:
    """Start the stages left to right, each on the read end of the pipe the previous one writes.

    The parent's copy of each inner pipe end is closed as soon as the stage it
    was made for runs: after stage ``i`` starts, the parent holds only the read
    end that stage ``i + 1`` will get.
    """
    global _large_pipes
    stage_stdin = first_stdin
    last = len(stages) - 1
    for index, (stage, request) in enumerate(zip(stages, requests, strict=True)):
        next_stdin: FileSpec = None
        if index == last:
            stage_stdout = last_stdout
        else:
            next_stdin, stage_stdout = _pipe(held)
            with _large_pipes_lock:
                if _large_pipes < _MAX_LARGE_PIPES and enlarge_pipe(next_stdin):
                    _large_pipes += 1
                    started._large_pipes += 1
        process = stage._start(
            index,
            request,
            stdin=stage_stdin,
            stdout=stage_stdout,
            process_group=started.pgid if index else 0,
            backend=backend,
            grace=started._grace,
        )
        started._stages.append(process)
        if index == 0:
            started._stdin = process.stdin
        if index == last:
            started._stdout = process.stdout
        for fd in (stage_stdin, stage_stdout):
            if isinstance(fd, int) and fd in held:
                held.remove(fd)
                _close(fd)
        stage_stdin = next_stdin


def _pipe(held: list[int]) -> tuple[int, int]:
    """A pipe, blocking on both ends and close-on-exec (as ``os.pipe`` makes them)."""
    read_fd, write_fd = os.pipe()
    held += (read_fd, write_fd)
    _in_flight.update((read_fd, write_fd))
    return read_fd, write_fd


def _close(fd: int) -> None:
    _in_flight.discard(fd)
    os.close(fd)


def _close_all(held: list[int]) -> None:
    while held:
        _close(held.pop())


# The inner pipe ends the parent holds while a pipeline starts. A child made by
# os.fork() in another thread meanwhile would inherit them (close-on-exec does
# not apply without an exec), and a write end it kept would hold EOF back from
# the next stage for as long as it lives: it closes them first thing.
_in_flight: set[int] = set()


def _close_in_flight_after_fork() -> None:
    for fd in list(_in_flight):
        with contextlib.suppress(OSError):
            os.close(fd)
    _in_flight.clear()


os.register_at_fork(after_in_child=_close_in_flight_after_fork)


def _end(name: str, value: object, stream_type: type, other: str) -> Any:
    """Check ``stdin`` or ``stdout``; a stream of another process gives its fd, made blocking.

    The fd is shared with the stage, and a non-blocking one would make its
    reads or writes fail with EAGAIN (trio#1707), so its ``O_NONBLOCK`` goes.
    """
    if not isinstance(value, (PipeReceiveStream, PipeSendStream)):
        check_file(
            name,
            value,
            f"PIPE, DEVNULL, a file descriptor, a file object, {other} "
            "stream of another aioproc process",
        )
        return value
    if not isinstance(value, stream_type):
        raise TypeError(
            f"{name} takes {other} stream of another aioproc process (engine='native'), "
            f"not {value!r}"
        )
    stream: Any = value
    if stream.closed:
        raise ValueError(f"{name}={value!r} is closed")
    if stream._busy:
        raise anyio.BusyResourceError(f"handing over {value!r}, which another task is using")
    if getattr(stream, "_pending", b""):
        raise ValueError(
            f"{name}={value!r} holds {len(stream._pending)} bytes already read from it: "
            "read them first, or pass a stream nothing was read from by line"
        )
    flags = fcntl.fcntl(stream._fd, fcntl.F_GETFL)
    if flags & os.O_NONBLOCK:
        fcntl.fcntl(stream._fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        stream._blocking = True
    return stream._fd
