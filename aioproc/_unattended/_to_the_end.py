"""Sections that must finish, whatever cancels the task that runs them.

anyio's shielded ``CancelScope`` holds off anyio's cancellations and trio's, but
not a plain asyncio one: ``Task.cancel()``, ``asyncio.wait_for``,
``asyncio.timeout``, an ``asyncio.TaskGroup`` or ``asyncio.run``'s shutdown
raise ``CancelledError`` at the next ``await`` even inside a shielded scope. On
asyncio the section therefore runs in a task of its own, which no cancellation
of the caller reaches, and the caller waits for it to end however often it is
cancelled meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from anyio import CancelScope

if TYPE_CHECKING:
    from .._backends import Backend

__all__ = ["run_to_the_end"]

T = TypeVar("T")


async def run_to_the_end(
    backend: Backend, section: Coroutine[Any, Any, T]
) -> tuple[T | None, BaseException | None]:
    """Run ``section`` to its end; return its result and the cancellation that came meanwhile.

    The caller decides what to do with a result it cannot return, then raises
    the cancellation (a plain asyncio ``CancelledError``; anyio's and trio's
    cancellations are held off by a shielded scope and arrive at the caller's
    next checkpoint, as usual). If ``section`` raises, that is raised here, unless
    a cancellation came meanwhile: then the result is ``None`` and the
    cancellation is returned.
    """
    with CancelScope(shield=True):
        if backend.name != "asyncio":
            return await section, None
        task = asyncio.ensure_future(section)
        cancelled: BaseException | None = None
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError as exc:
                cancelled = exc
    if cancelled is None:
        return task.result(), None
    if task.cancelled() or task.exception() is not None:
        return None, cancelled
    return task.result(), cancelled
