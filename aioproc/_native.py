"""The default engine: our own pipes, and exit notification from the child watcher.

No event-loop subprocess machinery is involved, so the same code runs on
asyncio, uvloop and trio: the child is started by ``_spawn.spawn``, its pipes
are :class:`FdReceiveStream` / :class:`FdSendStream`, and its exit is an fd
from ``_watcher`` awaited like any other.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any

import anyio

from . import _watcher
from ._process import Process
from ._streams import FdReceiveStream, FdSendStream

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._backends import Backend
    from ._spawn import SpawnedChild

__all__ = ["NativeProcess"]


class NativeProcess(Process):
    def __init__(
        self,
        args: Any,
        spawned: SpawnedChild,
        backend: Backend,
        *,
        leads_group: bool,
        grace: float,
        deliver_cancel: Callable[[Process], Awaitable[object]] | None,
    ) -> None:
        super().__init__(args, leads_group=leads_group, grace=grace, deliver_cancel=deliver_cancel)
        self._stdin = None if spawned.stdin is None else FdSendStream(spawned.stdin, backend)
        self._stdout = None if spawned.stdout is None else FdReceiveStream(spawned.stdout, backend)
        self._stderr = None if spawned.stderr is None else FdReceiveStream(spawned.stderr, backend)
        try:
            self._child = _watcher.watch(spawned.pid, anchors_group=leads_group)
        except BaseException:
            for stream in (self._stdin, self._stdout, self._stderr):
                if stream is not None:
                    stream.close()
            raise
        self._exit_watch = backend.watch(self._child.exit_fd)
        self._watching = False  # a task is waiting on the exit fd
        self._watch_ended: anyio.Event | None = None  # what the other waiters wait on

    @property
    def pid(self) -> int:
        return self._child.pid

    @property
    def returncode(self) -> int | None:
        """The exit status: ``None`` while the child runs, ``-N`` if signal N killed it."""
        return self._child.poll()

    @property
    def stdin(self) -> FdSendStream | None:
        return self._stdin

    @property
    def stdout(self) -> FdReceiveStream | None:
        return self._stdout

    @property
    def stderr(self) -> FdReceiveStream | None:
        return self._stderr

    async def _wait_for_exit(self) -> None:
        # One task at a time waits on the exit fd. The others wait for it to be
        # done; if it was cancelled instead, one of them takes over.
        child = self._child
        while child.returncode is None:
            if self._watching:
                if self._watch_ended is None:
                    self._watch_ended = anyio.Event()
                await self._watch_ended.wait()
                continue
            self._watching = True
            try:
                # ClosedResourceError: released meanwhile, so reaped (or abandoned).
                with contextlib.suppress(anyio.ClosedResourceError):
                    await self._exit_watch.wait_readable()
                child.wait_status()
                if not child.anchors_group:
                    self._release()
            finally:
                self._watching = False
                if self._watch_ended is not None:
                    self._watch_ended.set()
                    self._watch_ended = None

    def _signal(self, sig: int, group: bool) -> None:
        self._child.send_signal(sig, group=group)

    def _release(self) -> None:
        self._exit_watch.close()
        self._child.release()

    def __del__(self) -> None:
        # Dropped without aclose(): free what we hold without touching an event
        # loop (it may be closed by now). A child still running joins the orphan
        # list and is reaped later, so it cannot stay a zombie.
        child = getattr(self, "_child", None)
        if child is None:
            return
        running = child.poll() is None
        streams = (self._stdin, self._stdout, self._stderr)
        open_pipes = [s for s in streams if s is not None and s._fd >= 0]
        if running or open_pipes:
            warnings.warn(
                f"{self!r} was dropped while {'running' if running else 'its pipes were open'}; "
                "use 'async with' or 'await process.aclose()'",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )
        child.release()
