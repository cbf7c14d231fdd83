"""Fd readiness on an asyncio loop (the default loop or uvloop) through ``add_reader``.

A wait registers the fd, awaits a future and unregisters it. Registration is
two ``epoll_ctl`` calls per wait, but the streams only wait after a read or a
write has failed with ``EAGAIN``, so under load most calls never wait at all.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import anyio.lowlevel
from anyio import ClosedResourceError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = ["AsyncioBackend", "AsyncioFdWatch"]


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncioFdWatch:
    __slots__ = ("_fd", "_loop", "_reader", "_writer")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None

    async def wait_readable(self) -> None:
        if self._fd < 0:
            raise ClosedResourceError
        future = self._reader = self._loop.create_future()
        self._loop.add_reader(self._fd, _wake, future)
        try:
            await future
        finally:
            # After close() the fd number may already belong to somebody else:
            # only the watch that still owns the registration removes it.
            if self._reader is future:
                self._reader = None
                self._loop.remove_reader(self._fd)

    async def wait_writable(self) -> None:
        if self._fd < 0:
            raise ClosedResourceError
        future = self._writer = self._loop.create_future()
        self._loop.add_writer(self._fd, _wake, future)
        try:
            await future
        finally:
            if self._writer is future:
                self._writer = None
                self._loop.remove_writer(self._fd)

    def close(self) -> None:
        reader, writer, self._reader, self._writer = self._reader, self._writer, None, None
        if self._fd < 0:
            return
        if self._loop.is_closed():  # nothing to unregister or wake any more
            self._fd = -1
            return
        if reader is not None:
            self._loop.remove_reader(self._fd)
            if not reader.done():
                reader.set_exception(ClosedResourceError())
        if writer is not None:
            self._loop.remove_writer(self._fd)
            if not writer.done():
                writer.set_exception(ClosedResourceError())
        self._fd = -1


# Each system task, with what is to run after it (the loop itself keeps only
# weak references to its tasks). A loop closed without its tasks cancelled
# (loop.close() after run_until_complete(), where asyncio.run(), asyncio.Runner
# and anyio.run cancel them) leaves its system tasks pending forever: their
# `then` runs at the next call into aioproc instead (finish_abandoned_tasks).
# A forked child keeps its copy as it is: a task dropped there could be
# finalized, and its cleanup would unregister fds from the parent's epoll set.
_system_tasks: dict[asyncio.Task[None], Callable[[], None]] = {}


def finish_abandoned_tasks() -> None:
    """Run ``then`` for the system tasks of loops closed without cancelling them."""
    for task in list(_system_tasks):
        if task.get_loop().is_closed():
            then = _system_tasks.pop(task, None)
            if then is not None:
                # Its work is done here: no "Task was destroyed but it is pending!".
                task._log_destroy_pending = False  # type: ignore[attr-defined]
                then()


class AsyncioBackend:
    __slots__ = ("_loop",)
    name = "asyncio"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def watch(self, fd: int) -> AsyncioFdWatch:
        return AsyncioFdWatch(self._loop, fd)

    async def checkpoint(self) -> None:
        await asyncio.sleep(0)

    async def checkpoint_if_cancelled(self) -> None:
        # anyio knows its own cancel scopes; asking it costs a dict lookup.
        await anyio.lowlevel.checkpoint_if_cancelled()

    def spawn_system_task(
        self, fn: Callable[[], Coroutine[Any, Any, None]], then: Callable[[], None]
    ) -> None:
        # asyncio.run() and anyio.run() cancel the tasks left when the main one
        # ends, and run the loop until they are done and their callbacks called.
        def done(task: asyncio.Task[None]) -> None:
            if _system_tasks.pop(task, None) is not None:
                then()

        task = self._loop.create_task(fn())
        _system_tasks[task] = then
        task.add_done_callback(done)
