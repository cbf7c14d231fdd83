"""``ChildScope``: children you start and do not await, owned by an ``async with`` block.

Each child gets a small task that waits for it and reaps it the moment it
exits, so a scope that lives for days does not collect zombies. The tasks live
in an anyio task group, which gives the scope its structure: the block is not
left while a child runs, and a cancellation or an error reaches every task,
each of which then stops its child (``Process.stop``: TERM, grace, KILL, shielded).

The name avoids "group": a process group is something else (``process_group=0``).
"""

from __future__ import annotations

import math
import subprocess
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio import create_task_group, move_on_after

from .._spawn import Engine, open_process

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

    from .._spawn import FileSpec, Process, StrOrBytesPath

__all__ = ["ChildScope"]


class ChildScope:
    """An ``async with`` block that owns the children started with :meth:`start`.

    ::

        async with aioproc.ChildScope(timeout=30) as scope:
            for address in addresses:
                await scope.start(["sendmail", address])  # returns at once
            ...  # the children run meanwhile, and are reaped as they exit

    * **Leaving normally** waits for the children still running. With
      ``timeout``, after that many seconds the ones left are stopped (SIGTERM,
      their ``grace``, SIGKILL; to their process group when they lead one).
    * **Leaving by an exception or a cancellation** stops every child at once,
      the same way, before the exception goes on.
    * **Failures**: a child that exits nonzero, or is stopped at the timeout,
      counts as failed. With ``check=True`` (the default), leaving the block
      normally raises an ``ExceptionGroup`` of ``subprocess.CalledProcessError``,
      one per failed child. After an exception or a cancellation, that exception
      goes on alone. ``on_exit(process)``, if given, is called as each child is
      reaped: log there in a scope that lives long, with ``check=False`` if the
      failures should not be kept until the end. An exception from ``on_exit``
      is an error of the scope: the other children are stopped and it propagates.
      If the block was left by an exception meanwhile, that exception still goes
      on unchanged, and carries each error of ``on_exit`` in a note (its
      ``__notes__``, with the error's traceback).

    A child is unattended, so its stdin, stdout and stderr default to
    ``DEVNULL``, and ``PIPE`` is refused: a pipe nobody reads fills at 64 KiB and
    then blocks the child forever, and draining it into memory would grow without
    bound. Give a file, an fd, or ``None`` to share ours. To talk to a child, open
    it with ``async with open_process(...)`` in a task of your own.
    """

    def __init__(
        self,
        *,
        timeout: float | None = None,
        check: bool = True,
        on_exit: Callable[[Process], object] | None = None,
    ) -> None:
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or math.isnan(timeout)
            or timeout < 0
        ):
            raise ValueError(f"timeout must be a number of seconds >= 0 or None, not {timeout!r}")
        if on_exit is not None and not callable(on_exit):
            raise TypeError(f"on_exit must be a callable taking the process, not {on_exit!r}")
        self._timeout = timeout
        self._check = check
        self._on_exit = on_exit
        self._task_group: TaskGroup | None = None
        self._closed = False
        self._running: set[Process] = set()
        self._idle: anyio.Event | None = None  # set once no child runs, while leaving
        self.failures: list[subprocess.CalledProcessError] = []
        """One ``CalledProcessError`` per child that failed so far (kept if ``check``)."""

    @property
    def running(self) -> frozenset[Process]:
        """The children started here that have not been reaped yet."""
        return frozenset(self._running)

    async def __aenter__(self) -> ChildScope:
        if self._task_group is not None:
            raise RuntimeError("a ChildScope can be entered only once")
        task_group = create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool:
        task_group = self._task_group
        assert task_group is not None, "ChildScope was not entered"
        if exc_val is not None:
            if isinstance(exc_val, anyio.get_cancelled_exc_class()):
                return await self._close(exc_type, exc_val, exc_tb)
            # The block's own error goes on unchanged, as from open_process's block;
            # handed to the task group, it would come out wrapped in an ExceptionGroup.
            task_group.cancel_scope.cancel()
            try:
                await self._close(None, None, None)
            except BaseExceptionGroup as group:
                # Errors of the scope while it stopped the children (on_exit's): the
                # block's exception still goes on, and names them in its notes.
                _note_errors(exc_val, group)
            return False
        if self._timeout is not None and self._running:
            self._idle = anyio.Event()
            task_group.start_soon(self._stop_after, self._idle, self._timeout)
        await self._close(None, None, None)
        if self._check and self.failures:
            count = len(self.failures)
            raise ExceptionGroup(
                f"{count} child process{'es' if count > 1 else ''} failed", list(self.failures)
            )
        return False

    async def _close(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool:
        assert self._task_group is not None
        try:
            return await self._task_group.__aexit__(exc_type, exc_val, exc_tb)
        finally:
            self._closed = True

    async def start(
        self,
        command: StrOrBytesPath | Sequence[StrOrBytesPath],
        *,
        stdin: FileSpec = subprocess.DEVNULL,
        stdout: FileSpec = subprocess.DEVNULL,
        stderr: FileSpec = subprocess.DEVNULL,
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
    ) -> Process:
        """Start ``command`` as a child of this scope, and return its :class:`Process` at once.

        The arguments are those of :func:`open_process`, but stdio defaults to
        ``DEVNULL`` and cannot be ``PIPE``. The process is the scope's to reap
        and stop; you may ``wait()`` for it, read its ``returncode`` or signal it.
        """
        task_group = self._task_group
        if task_group is None or self._closed:
            raise RuntimeError("ChildScope.start() needs the scope open: 'async with' it first")
        for name, value in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
            if isinstance(value, int) and value == subprocess.PIPE:
                raise ValueError(
                    f"{name}=PIPE is not valid in a ChildScope: nobody would read the pipe; "
                    "use open_process in a task of your own to talk to a child"
                )
        process = await open_process(
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
        )
        # No await from here on: the child belongs to its task before we can be cancelled.
        self._running.add(process)
        try:
            task_group.start_soon(self._supervise, process)
        except BaseException:
            self._running.discard(process)
            await process.stop()
            raise
        return process

    async def _supervise(self, process: Process) -> None:
        try:
            await process.wait()
            await process.aclose()  # reaps a group leader, kept a zombie until now
        except BaseException:
            await process.stop()
            raise
        finally:
            self._reaped(process)

    def _reaped(self, process: Process) -> None:
        self._running.discard(process)
        if self._idle is not None and not self._running:
            self._idle.set()
        returncode = process.returncode
        if self._check and returncode:
            self.failures.append(subprocess.CalledProcessError(returncode, process.args))
        if self._on_exit is not None:
            self._on_exit(process)

    async def _stop_after(self, idle: anyio.Event, delay: float) -> None:
        with move_on_after(delay):
            await idle.wait()
            return
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()


def _note_errors(error: BaseException, group: BaseExceptionGroup[BaseException]) -> None:
    """Add a note to ``error`` for each exception in ``group``, with its traceback."""
    leaves = _leaves(group)
    for index, found in enumerate(leaves, 1):
        formatted = "".join(traceback.format_exception(found)).rstrip()
        error.add_note(
            f"While the ChildScope stopped its children after this exception, an error "
            f"of the scope was raised ({index} of {len(leaves)}):\n{formatted}"
        )


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
