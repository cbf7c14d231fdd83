"""The public :class:`Process`: what every engine offers, and how a child is stopped.

An engine (``_native``, ``_asyncio_engine``) supplies the mechanism: the
pipes, how to learn that the child exited, how to signal it and how to let it
go. This module holds the policy that must not differ between engines: what
``wait()``, ``aclose()`` and leaving an ``async with`` block do, and the
shutdown sequence (close stdin, SIGTERM, ``grace`` seconds, SIGKILL, reap).
"""

from __future__ import annotations

import math
import signal
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import anyio
import anyio.abc
from anyio import create_task_group, move_on_after

from .._backends import run_to_completion
from ._streams import PendingInput

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Generator
    from types import TracebackType

    from ._pty import Terminal
    from ._streams import PipeReceiveStream, PipeSendStream

__all__ = ["Opener", "Process", "check_grace"]


def check_grace(grace: float) -> float:
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or math.isnan(grace):
        raise TypeError(f"grace must be a number of seconds, not {grace!r}")
    if grace < 0:
        raise ValueError(f"grace must be >= 0 seconds, not {grace!r}")
    return float(grace)


class Process(anyio.abc.Process):
    """A child process started by :func:`aioproc.open_process`.

    It is an ``anyio.abc.Process``, so code typed against anyio accepts it. On
    top of that:

    * :meth:`wait` returns as soon as the child exits, even while a grandchild
      still holds its pipes open;
    * leaving ``async with`` by an exception or a cancellation *stops* the child
      (:meth:`stop`) instead of just waiting for it;
    * signals can go to the child's whole process group when it leads one.
    """

    pty: Terminal | None = None
    """The child's terminal (resize, interrupt, send EOF) if started with ``pty=``."""

    def __init__(
        self,
        args: Any,
        *,
        leads_group: bool,
        grace: float,
        deliver_cancel: Callable[[Process], Awaitable[object]] | None,
    ) -> None:
        self.args = args
        """The command as it was given to :func:`open_process`."""
        self._leads_group = leads_group
        self._grace = grace
        self._deliver_cancel = deliver_cancel
        self._input: PendingInput | None = None  # given to communicate(), and how far it got

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"<{name} pid={self.pid} returncode={self.returncode} args={self.args!r}>"

    # -- the mechanism each engine supplies -------------------------------------------

    @property
    @abstractmethod
    def stdin(self) -> PipeSendStream | None: ...

    @property
    @abstractmethod
    def stdout(self) -> PipeReceiveStream | None: ...

    @property
    @abstractmethod
    def stderr(self) -> PipeReceiveStream | None: ...

    @abstractmethod
    async def _wait_for_exit(self) -> None:
        """Return once the child has exited and ``returncode`` is set."""

    @abstractmethod
    def _signal(self, sig: int, group: bool) -> None:
        """Send ``sig`` unless the child is already gone (no-op then)."""

    @abstractmethod
    def _release(self) -> None:
        """Reap the child if it has exited (else orphan it) and free the watch on it."""

    # -- the public API ---------------------------------------------------------------

    @property
    def leads_group(self) -> bool:
        """Whether the child leads its own process group (``process_group=0`` or a new session)."""
        return self._leads_group

    async def wait(self) -> int:
        """Wait until the child exits, and return its return code.

        It does not wait for the pipes: a grandchild that inherited stdout does
        not hold this up.
        """
        returncode = self.returncode
        if returncode is None:
            await self._wait_for_exit()
            returncode = self.returncode
            assert returncode is not None
        else:
            await anyio.lowlevel.checkpoint()
        return returncode

    async def communicate(
        self, input: bytes | bytearray | memoryview | None = None
    ) -> tuple[bytes | None, bytes | None]:
        """Write ``input`` to stdin and close it, read stdout and stderr to EOF, wait for the exit.

        As ``Popen.communicate()``: returns ``(stdout, stderr)``, ``None`` for a
        stream that is not a pipe. Reading and writing go on together, so a
        child that answers while it is fed cannot deadlock.

        If this is cancelled, what was read stays in the streams for the next
        read, and how far ``input`` got is remembered: call ``communicate()``
        again, without input (or with the same input), and the rest of it is
        written, as ``Popen.communicate()`` resumes. Other input on a retry is
        a ``ValueError``. If another task closes the pipes meanwhile (``aclose()``,
        ``stop()``), this raises ``ClosedResourceError``.
        """
        return await self._communicate(input, feed_stdin=True)

    async def _communicate(
        self, input: bytes | bytearray | memoryview | None, *, feed_stdin: bool
    ) -> tuple[bytes | None, bytes | None]:
        """:meth:`communicate`; ``feed_stdin=False`` leaves stdin alone (``run_process``
        without ``input``, where the caller may feed it through ``TaskGroup.start()``)."""
        pending = self._pending_input(input) if feed_stdin else None
        self._check_communicate(None if feed_stdin else input)
        stdin = self.stdin if feed_stdin and not (self.stdin and self.stdin.closed) else None
        stdout, stderr = self.stdout, self.stderr
        output: bytes | None = None
        errors: list[bytes] = []

        async def read_stderr(stream: PipeReceiveStream) -> None:
            errors.append(await stream.read_all())

        try:
            async with create_task_group() as tg:
                if stdin is not None:
                    tg.start_soon(_feed, stdin, pending)
                if stderr is not None:
                    tg.start_soon(read_stderr, stderr)
                if stdout is not None:
                    output = await stdout.read_all()
        except BaseExceptionGroup as group:
            # Closed by another task: one ClosedResourceError, as the native engine gives.
            _, others = group.split(anyio.ClosedResourceError)
            if others is None:
                raise anyio.ClosedResourceError from group
            raise
        await self.wait()
        return output, errors[0] if stderr is not None else None

    def _pending_input(self, input: bytes | bytearray | memoryview | None) -> PendingInput | None:
        """What ``communicate()`` has to write: the rest of the input of an earlier,
        cancelled call, or ``input``. Checks ``input`` and the streams."""
        earlier = self._input
        if earlier is None:
            self._check_communicate(input)
            if input is None:
                return None
            self._input = PendingInput(input)
            return self._input
        if input is not None and not earlier.same(input):
            raise ValueError(
                "communicate() was already given other input, and resumes it: call it again "
                "without input (or with the same input)"
            )
        if earlier.rest and self.stdin is not None and self.stdin.closed:
            raise anyio.ClosedResourceError(
                f"{len(earlier.rest)} bytes of input are left, but stdin is closed"
            )
        self._check_communicate(None)
        return earlier

    def _check_communicate(self, input: object) -> None:
        if input is not None:
            if not isinstance(input, (bytes, bytearray, memoryview)):
                raise TypeError(f"input must be bytes, not {type(input).__name__}")
            if self.stdin is None:
                raise ValueError("input was given, but stdin is not a pipe: use stdin=PIPE")
            if self.stdin.closed:
                raise anyio.ClosedResourceError("input was given, but stdin is closed")
        for stream in (self.stdout, self.stderr):
            if stream is not None and stream.closed:
                raise anyio.ClosedResourceError

    def send_signal(self, signal: int, *, group: bool = False) -> None:
        """Send ``signal`` to the child, or with ``group=True`` to the group it leads.

        It does nothing once the child has exited: its pid may belong to another
        process by then. The group can be signalled until the child is released.
        """
        if group and not self._leads_group:
            raise ValueError(
                f"process {self.pid} does not lead a process group: start it with "
                "process_group=0 or start_new_session=True to signal its group"
            )
        self._signal(signal, group)

    def terminate(self, *, group: bool = False) -> None:
        """Send SIGTERM (to the process group with ``group=True``)."""
        self.send_signal(signal.SIGTERM, group=group)

    def kill(self, *, group: bool = False) -> None:
        """Send SIGKILL (to the process group with ``group=True``)."""
        self.send_signal(signal.SIGKILL, group=group)

    async def aclose(self) -> None:
        """Close the pipes, then wait for the child to exit, as anyio's ``aclose()`` does.

        Closing stdout and stderr first lets a child blocked on a full pipe fail
        its write and exit. If this is cancelled while waiting, the child is
        stopped as by :meth:`stop`, and reaped, before the cancellation goes on.
        """
        self._close_streams()
        if self.returncode is None:
            try:
                await self._wait_for_exit()
            except BaseException:
                await self.stop()
                raise
        self._release()

    async def stop(self, grace: float | None = None) -> None:
        """Stop the child now, and reap it: what leaving ``async with`` by an error does.

        Shielded from cancellation. Unless ``deliver_cancel`` was given to
        ``open_process``: close stdin, send SIGTERM (to the process group if the
        child leads one), wait ``grace`` seconds (default: the ``grace`` given to
        ``open_process``), then send SIGKILL. Once the child is gone, whatever is
        left in its process group gets SIGKILL too.

        If ``deliver_cancel`` raises, the child gets SIGKILL at once; once it is
        reaped and its pipes closed, the exception is raised from here as it is,
        not wrapped (what led to the stop, if anything, is its ``__context__``).

        Shielded from plain asyncio cancellation too (``Task.cancel()``,
        ``asyncio.timeout``): the sequence runs to its end in a task of its own,
        and the cancellation is delivered after it.
        """
        grace = self._grace if grace is None else check_grace(grace)
        failure = await run_to_completion(lambda: self._stop(grace))
        if failure is not None:
            raise failure

    async def _stop(self, grace: float) -> BaseException | None:
        if self.stdin is not None:
            await self.stdin.aclose()
        failure = None
        if self.returncode is None:
            if self._deliver_cancel is None:
                await self._terminate_then_kill(grace)
            else:
                failure = await self._run_deliver_cancel(self._deliver_cancel)
        if self._leads_group:
            self._signal(signal.SIGKILL, True)
        self._close_streams()
        self._release()
        return failure

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

    # -- shutdown ---------------------------------------------------------------------

    async def _terminate_then_kill(self, grace: float) -> None:
        self._signal(signal.SIGTERM, self._leads_group)
        if grace > 0:
            with move_on_after(grace):
                await self._wait_for_exit()
        if self.returncode is None:
            self._signal(signal.SIGKILL, self._leads_group)
            await self._wait_for_exit()

    async def _run_deliver_cancel(
        self, deliver_cancel: Callable[[Process], Awaitable[object]]
    ) -> BaseException | None:
        """Run the hook while waiting for the exit, as trio's ``run_process`` does, and
        cancel it once the child is gone. If it fails, the child is killed at once and
        the error returned, for :meth:`stop` to raise once the child is reaped."""
        cancelled = anyio.get_cancelled_exc_class()
        exited = False
        failures: list[BaseException] = []

        async def deliver() -> None:
            try:
                await deliver_cancel(self)
            except BaseException as exc:
                if exited and isinstance(exc, cancelled):
                    raise  # ours: the child is gone
                failures.append(exc)
                self._signal(signal.SIGKILL, self._leads_group)

        async with create_task_group() as tg:
            tg.start_soon(deliver)
            await self._wait_for_exit()
            exited = True
            tg.cancel_scope.cancel()
        return failures[0] if failures else None

    def _close_streams(self) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close()


async def _feed(stdin: PipeSendStream, pending: PendingInput | None) -> None:
    """Write what is left of the input (if any) and close stdin. A child may exit
    without reading all of it; ``communicate()`` ignores that too. Cancelled,
    stdin stays open and ``pending`` tells how far it got, for a retry."""
    if pending is not None:
        try:
            await stdin._send_pending(pending)
        except anyio.BrokenResourceError:
            pending.rest = pending.rest[:0]
    stdin.close()
    await anyio.lowlevel.checkpoint()


class _Stoppable(Protocol):
    """What an :class:`Opener` opens: a process, or a group of them (a pipeline)."""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None: ...


ProcessT = TypeVar("ProcessT", bound=_Stoppable)


class Opener(ABC, Generic[ProcessT]):
    """What ``open_process()``, ``fork()`` and ``pipeline()`` return: await it, or use it
    with ``async with``.

    Awaited, it gives the process, which the caller then owns. Used with
    ``async with``, it gives the process for the block and, on the way out,
    waits for it or, if the block was left by an exception or a cancellation,
    stops it (see :meth:`Process.__aexit__`).
    """

    __slots__ = ("_process",)

    def __init__(self) -> None:
        self._process: ProcessT | None = None

    def __await__(self) -> Generator[Any, None, ProcessT]:
        return self._open().__await__()

    async def __aenter__(self) -> ProcessT:
        self._process = await self._open()
        return self._process

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        assert self._process is not None
        await self._process.__aexit__(exc_type, exc_val, exc_tb)

    @abstractmethod
    async def _open(self) -> ProcessT:
        """Start the process."""
