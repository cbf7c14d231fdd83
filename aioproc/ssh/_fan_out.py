"""``fan_out``: one command on many hosts, within a total and a per-host limit."""

from __future__ import annotations

import math
import subprocess
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
from anyio import CancelScope, CapacityLimiter, create_memory_object_stream, create_task_group
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._host import Host, connect

__all__ = ["FanOut", "fan_out"]

Result = subprocess.CompletedProcess[bytes] | Exception


def fan_out(
    hosts: Iterable[Host | str | tuple[Host | str, Any]],
    command: Any = None,
    *,
    limit: int = 64,
    per_host: int = 8,
    fail_fast: bool = False,
    connect_options: Mapping[str, Any] | None = None,
    **run_options: Any,
) -> FanOut:
    """Run ``command`` once per item of ``hosts``, and yield ``(host, result)`` as each completes.

    Use it as ``async with fan_out(hosts, cmd) as results: async for host, result in results``.
    An item is a connected :class:`Host`, a destination string (connected once
    for all its items with ``connect_options``, closed at the end), or a
    ``(host, command)`` pair with a command of its own. The same host may come
    many times: at most ``per_host`` of its commands run at once, and at most
    ``limit`` in all. ``result`` is the ``CompletedProcess`` from
    :meth:`Host.run_process` (called with ``run_options``; ``check`` is False
    unless given), or the exception it raised: one host's failure does not stop
    the others. With ``fail_fast=True`` the first failure is raised from the
    iteration instead, and the other commands are stopped. Leaving the block
    early stops what still runs.
    """
    for name, value in (("limit", limit), ("per_host", per_host)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, not {value!r}")
    jobs: list[tuple[Host | str, Any]] = []
    for item in hosts:
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ValueError(f"a (host, command) pair was expected, not {item!r}")
            target, item_command = item
        else:
            target, item_command = item, command
        if not isinstance(target, (Host, str)):
            raise TypeError(f"a host must be a Host or a destination str, not {target!r}")
        if item_command is None:
            raise ValueError(f"no command for {target!r}: give fan_out a command")
        jobs.append((target, item_command))
    run_options.setdefault("check", False)
    return FanOut(jobs, limit, per_host, fail_fast, dict(connect_options or {}), run_options)


class FanOut:
    """What :func:`fan_out` returns: an async context manager giving the results as they come."""

    def __init__(
        self,
        jobs: list[tuple[Host | str, Any]],
        limit: int,
        per_host: int,
        fail_fast: bool,
        connect_options: dict[str, Any],
        run_options: dict[str, Any],
    ) -> None:
        self._work = jobs
        self._jobs = CancelScope()  # around the commands only, not the caller's block
        self._limit = limit
        self._per_host = per_host
        self._fail_fast = fail_fast
        self._connect_options = connect_options
        self._run_options = run_options
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> AsyncIterator[tuple[Host | str, Result]]:
        async with AsyncExitStack() as stack:
            tg = await stack.enter_async_context(create_task_group())
            send, receive = create_memory_object_stream[tuple[Host | str, Result]](math.inf)
            stack.push_async_callback(receive.aclose)
            total = CapacityLimiter(self._limit)
            by_host: dict[Host | str, list[Any]] = {}
            for target, command in self._work:
                by_host.setdefault(target, []).append(command)
            tg.start_soon(self._run_all, by_host, total, send)
            self._stack = stack.pop_all()
        return self._results(receive)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        # The commands' task group must not see the block's exception (it would
        # wrap it in an ExceptionGroup): stop the commands, wait, then let it go on.
        self._jobs.cancel()
        await self._stack.__aexit__(None, None, None)
        return None

    async def _results(
        self, receive: MemoryObjectReceiveStream[tuple[Host | str, Result]]
    ) -> AsyncIterator[tuple[Host | str, Result]]:
        async for host, result in receive:
            if self._fail_fast and isinstance(result, Exception):
                self._jobs.cancel()
                raise result
            yield host, result

    async def _run_all(
        self,
        by_host: dict[Host | str, list[Any]],
        total: CapacityLimiter,
        send: MemoryObjectSendStream[tuple[Host | str, Result]],
    ) -> None:
        with self._jobs:
            async with send, create_task_group() as tg:
                for target, commands in by_host.items():
                    tg.start_soon(self._run_on, target, commands, total, send.clone())

    async def _run_on(
        self,
        target: Host | str,
        commands: list[Any],
        total: CapacityLimiter,
        send: MemoryObjectSendStream[tuple[Host | str, Result]],
    ) -> None:
        async with send:
            if isinstance(target, Host):
                await self._run_commands(target, target, commands, total, send)
                return
            try:
                async with connect(target, **self._connect_options) as host:
                    await self._run_commands(target, host, commands, total, send)
            except Exception as exc:  # the connection failed: each command gets the error
                for _ in commands:
                    await send.send((target, exc))

    async def _run_commands(
        self,
        target: Host | str,
        host: Host,
        commands: list[Any],
        total: CapacityLimiter,
        send: MemoryObjectSendStream[tuple[Host | str, Result]],
    ) -> None:
        per_host = CapacityLimiter(self._per_host)

        async def run(command: Any) -> None:
            async with per_host, total:
                try:
                    result: Result = await host.run_process(command, **self._run_options)
                except Exception as exc:
                    result = exc
            await send.send((target, result))

        async with create_task_group() as tg:
            for command in commands:
                tg.start_soon(run, command)


_ = anyio
