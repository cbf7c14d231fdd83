"""Cancelling a task the way its own event loop library does, not through anyio.

anyio's shielded ``CancelScope`` holds off anyio's cancellations, but not a plain
asyncio ``Task.cancel()`` (which is what ``asyncio.wait_for``, ``asyncio.timeout``,
``asyncio.TaskGroup`` and ``asyncio.run``'s shutdown send). Sections that must
finish are tested against that: on asyncio and uvloop the task is an asyncio
task cancelled with ``Task.cancel()``; on trio, where every cancellation is a
cancel scope's, a trio ``CancelScope`` is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sniffio


@dataclass
class Outcome:
    """How the task ended: with ``value``, cancelled, or by ``error``."""

    value: Any = None
    cancelled: bool = False
    error: BaseException | None = None


async def cancel_natively(
    fn: Callable[[], Awaitable[Any]], moments: list[Callable[[], Awaitable[object]]]
) -> Outcome:
    """Run ``fn()`` in a task of its own; after each of ``moments``, cancel that task once."""
    if sniffio.current_async_library() == "trio":
        return await _on_trio(fn, moments)
    task = asyncio.ensure_future(fn())
    for moment in moments:
        await moment()
        task.cancel()
    await asyncio.wait((task,))
    if task.cancelled():
        return Outcome(cancelled=True)
    if task.exception() is not None:
        return Outcome(error=task.exception())
    return Outcome(value=task.result())


async def _on_trio(
    fn: Callable[[], Awaitable[Any]], moments: list[Callable[[], Awaitable[object]]]
) -> Outcome:
    import trio

    outcome = Outcome()
    scope = trio.CancelScope()

    async def run() -> None:
        try:
            with scope:
                outcome.value = await fn()
                await trio.lowlevel.checkpoint()  # where a cancellation that was held off arrives
        except Exception as exc:
            outcome.error = exc
        outcome.cancelled = scope.cancelled_caught

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        for moment in moments:
            await moment()
            scope.cancel()
    return outcome
