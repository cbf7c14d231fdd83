"""Cancel a scenario at each of its await points in turn, and check nothing is left behind.

Every await inside aioproc ends in one of a few primitives: an fd wait of the
backend (``wait_readable``/``wait_writable``), a backend checkpoint, or an
anyio ``Event``. :class:`Sweep` wraps them so that the N-th one reached cancels
the scenario's scope just before it awaits. Running the scenario with N = 1, 2,
3, ... until it finishes without reaching N visits every await point that a
run goes through, deterministically, rather than hoping a stepped timeout lands
on each.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from aioproc._backends._asyncio import AsyncioBackend, AsyncioFdWatch
from aioproc._backends._trio import TrioBackend, TrioFdWatch

from .helpers import children_of_us, open_fds


class Sweep:
    def __init__(self) -> None:
        self.reached = 0
        self.target = 0
        self.scope: anyio.CancelScope | None = None

    def hit(self) -> None:
        self.reached += 1
        if self.reached == self.target and self.scope is not None:
            self.scope.cancel()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def wrap(cls: type, name: str) -> None:
            original = getattr(cls, name)

            async def counted(*args: Any, **kwargs: Any) -> Any:
                self.hit()
                return await original(*args, **kwargs)

            monkeypatch.setattr(cls, name, counted)

        for cls in (AsyncioFdWatch, TrioFdWatch):
            wrap(cls, "wait_readable")
            wrap(cls, "wait_writable")
        for cls in (AsyncioBackend, TrioBackend):
            wrap(cls, "checkpoint")
            wrap(cls, "checkpoint_if_cancelled")
        wrap(anyio.Event, "wait")

    async def run(self, scenario: Callable[[], Awaitable[object]], *, limit: int = 2000) -> int:
        """Cancel ``scenario`` at its 1st, 2nd, ... await; return how many were swept."""
        fds = open_fds()
        children = children_of_us()
        target = 0
        while True:
            target += 1
            assert target < limit, "the scenario never finished: is it looping?"
            self.reached, self.target = 0, target
            with anyio.CancelScope() as scope:
                self.scope = scope
                try:
                    await scenario()
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:  # anything but the cancellation is a bug
                    raise AssertionError(
                        f"cancelling at await #{target} raised {exc!r}, not a cancellation"
                    ) from exc
            self.scope = None
            await _settle(fds, children, target)
            if self.reached < target:
                return target - 1


async def _settle(fds: set[int], children: dict[int, str], target: int) -> None:
    # A waiter thread of the thread watcher may take a moment to close its pipe.
    with anyio.move_on_after(5):
        while open_fds() != fds or children_of_us() != children:
            await anyio.sleep(0.005)
    assert open_fds() == fds, f"cancelling at await #{target} leaked fds"
    assert children_of_us() == children, f"cancelling at await #{target} left children"
