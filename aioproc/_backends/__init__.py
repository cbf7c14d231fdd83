"""The few event-loop primitives aioproc needs, for whichever library is running.

Everything else (task groups, cancel scopes, events, locks) comes from anyio.
What anyio does not give cheaply is waiting on one file descriptor over and
over: ``anyio.wait_readable`` looks the backend up, keeps a per-context table of
waiters and re-registers the fd on each call. Pipes and pidfds are waited on
thousands of times a second, so each stream keeps an :class:`FdWatch` made once
by the backend that was running when the stream was created.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from anyio import CancelScope

from .._watcher import _dropped, release_dropped
from ._asyncio import AsyncioBackend, _system_tasks, finish_abandoned_tasks

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

__all__ = ["Backend", "FdWatch", "current_backend", "run_to_completion"]

T = TypeVar("T")


class FdWatch(Protocol):
    """Readiness waits on one file descriptor, by one task at a time per direction."""

    def wait_readable(self) -> Awaitable[None]:
        """Return once the fd is readable; raise ``ClosedResourceError`` if closed meanwhile."""
        ...

    def wait_writable(self) -> Awaitable[None]:
        """Return once the fd is writable; raise ``ClosedResourceError`` if closed meanwhile."""
        ...

    def close(self) -> None:
        """Wake every waiter with ``ClosedResourceError``; call it before closing the fd."""
        ...


class Backend(Protocol):
    """The running event loop, seen through what aioproc asks of it."""

    name: str

    def watch(self, fd: int) -> FdWatch:
        """Make an :class:`FdWatch` for ``fd``, bound to the running loop."""
        ...

    def checkpoint(self) -> Awaitable[None]:
        """Let other tasks run, and deliver a pending cancellation."""
        ...

    def checkpoint_if_cancelled(self) -> Awaitable[None]:
        """Deliver a pending cancellation, without letting other tasks run."""
        ...

    def spawn_system_task(
        self, fn: Callable[[], Coroutine[Any, Any, None]], then: Callable[[], None]
    ) -> None:
        """Run ``fn()`` as a task of the loop itself, in no task group, then call ``then()``.

        The task outlives its caller. If the loop shuts down first, the task is
        cancelled, and ``then()`` still runs before the loop is gone, even if the
        task never started (an asyncio task cancelled early never runs at all).
        """
        ...


def current_backend() -> Backend:
    """Return the backend of the event loop running in this thread.

    Trio is checked first because trio in guest mode runs on top of an asyncio
    loop, and there the task belongs to trio. Every call into aioproc comes
    here first, so this is also where the system tasks of asyncio loops closed
    without cancelling them are finished, and a safe point where the children
    of finalized processes are released (``_watcher.release_later``).
    """
    if _system_tasks:
        finish_abandoned_tasks()
    if _dropped:
        release_dropped()
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_task():
        from ._trio import TrioBackend

        return TrioBackend()
    loop = asyncio._get_running_loop()
    if loop is not None:
        return AsyncioBackend(loop)
    raise RuntimeError("aioproc needs a running asyncio (or uvloop) or trio event loop")


async def run_to_completion(
    fn: Callable[[], Awaitable[T]], undo: Callable[[T], Awaitable[object]] | None = None
) -> T:
    """Run ``fn()`` to its end whatever cancels the caller, then deliver the cancellation.

    For the sections that must finish (a stop sequence, a spawn). anyio's
    shielded scope holds off anyio's cancellation, and trio's, but not a plain
    asyncio ``Task.cancel()``, nor ``asyncio.timeout``, ``wait_for`` or
    ``TaskGroup``, which most asyncio users cancel with. So on asyncio ``fn()``
    runs in a task of its own, which no cancellation of the caller reaches, and
    the caller waits for it through ``asyncio.shield`` as often as it is
    cancelled. If it was, ``undo(result)`` runs the same way, and then
    ``CancelledError`` is raised.
    """
    if current_backend().name != "asyncio":
        with CancelScope(shield=True):
            return await fn()

    async def call() -> T:  # a coroutine, as create_task() needs
        return await fn()

    task = asyncio.get_running_loop().create_task(call())
    cancelled = False
    with CancelScope(shield=True):  # anyio's own cancellation, delivered at the end too
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.done():
                    break
                cancelled = True
    result = task.result()  # fn's own error, or its cancellation by the loop's shutdown
    if not cancelled:
        return result
    if undo is not None:
        await run_to_completion(lambda: undo(result))
    raise asyncio.CancelledError
