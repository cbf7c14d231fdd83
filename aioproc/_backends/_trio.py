"""Fd readiness on trio, which already has the right primitives in ``trio.lowlevel``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
from anyio import ClosedResourceError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = ["TrioBackend", "TrioFdWatch"]


class TrioFdWatch:
    __slots__ = ("_fd", "_waiters")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._waiters = 0

    async def wait_readable(self) -> None:
        if self._fd < 0:
            raise ClosedResourceError
        self._waiters += 1
        try:
            await trio.lowlevel.wait_readable(self._fd)
        except trio.ClosedResourceError:
            raise ClosedResourceError from None
        finally:
            self._waiters -= 1

    async def wait_writable(self) -> None:
        if self._fd < 0:
            raise ClosedResourceError
        self._waiters += 1
        try:
            await trio.lowlevel.wait_writable(self._fd)
        except trio.ClosedResourceError:
            raise ClosedResourceError from None
        finally:
            self._waiters -= 1

    def close(self) -> None:
        # notify_closing() wakes the waiters and drops trio's registration, an
        # epoll_ctl each time. With nobody waiting there is nothing to wake, and
        # whatever the kernel still holds for the fd goes when the fd is closed.
        if self._fd >= 0 and self._waiters:
            trio.lowlevel.notify_closing(self._fd)
        self._fd = -1


class TrioBackend:
    __slots__ = ()
    name = "trio"

    def watch(self, fd: int) -> TrioFdWatch:
        return TrioFdWatch(fd)

    async def checkpoint(self) -> None:
        await trio.lowlevel.checkpoint()

    async def checkpoint_if_cancelled(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()

    def spawn_system_task(
        self, fn: Callable[[], Coroutine[Any, Any, None]], then: Callable[[], None]
    ) -> None:
        # A trio task always starts, even when cancelled at once.
        async def run() -> None:
            try:
                await fn()
            finally:
                then()

        trio.lowlevel.spawn_system_task(run)
