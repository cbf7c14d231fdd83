"""1. Spawn rate: start ``/bin/true`` and wait for it, over and over, one at a time.

Each implementation does what a user of its API would write: open the process
(or run it), wait for the exit, close what it opened. Reported: processes per
second, and the CPU time of the parent alone (every thread of it, through
``getrusage(RUSAGE_SELF)``) per spawn. The parent holds 0 MB or 200 MB of
touched heap, because an implementation that really forks (libuv) slows down as
the page tables it must copy grow.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._core import (
    AIOPROC,
    AIOPROC_ASYNCIO_ENGINE,
    AIOPROC_RUN,
    ANYIO_OPEN,
    ANYIO_RUN,
    ASYNCIO,
    LIMIT_POPEN,
    LIMIT_POSIX_SPAWN,
    TRIO_OPEN,
    TRIO_RUN,
    Case,
    Impl,
    Measurement,
    Metric,
    Mode,
    aioproc_run_style,
    cpu_seconds,
    devnull,
    engine_of,
    hold_heap,
    open_style,
    run_on,
    run_style,
)

CMD = ["/bin/true"]
WARMUP = 3


def cases(mode: Mode) -> list[Case]:
    settings = [(stdio, heap) for stdio in ("pipes", "devnull") for heap in (0, 200)]
    if mode == "quick":  # the heap matters most with pipes; this keeps --quick under 2 min
        settings.remove(("devnull", 200))
    elif mode == "smoke":  # every code path once: pipes, devnull, a heap
        settings = [("pipes", 0), ("devnull", 8)]
    seconds = {"full": 1.5, "quick": 0.2, "smoke": 0.0}[mode]
    minimum = 3 if mode == "smoke" else 20
    return [
        Case(
            f"{stdio}, {heap} MB heap",
            {"stdio": stdio, "heap_mb": heap, "seconds": seconds, "min_spawns": minimum},
        )
        for stdio, heap in settings
    ]


def _async_spawner(impl: Impl, pipes: bool) -> Callable[[], Awaitable[None]]:
    """Return a coroutine function that spawns and waits for one child."""
    stdio = subprocess.PIPE if pipes else subprocess.DEVNULL
    if impl.api in (AIOPROC, AIOPROC_ASYNCIO_ENGINE):
        import aioproc

        engine = engine_of(impl)

        async def aioproc_once() -> None:
            async with aioproc.open_process(
                CMD, stdin=stdio, stdout=stdio, stderr=stdio, engine=engine
            ) as process:
                await process.wait()

        return aioproc_once
    if impl.api == ASYNCIO:
        import asyncio

        async def asyncio_once() -> None:
            process = await asyncio.create_subprocess_exec(
                *CMD, stdin=stdio, stdout=stdio, stderr=stdio
            )
            await process.wait()

        return asyncio_once
    if impl.api == TRIO_OPEN:
        import trio

        async def trio_open_once() -> None:
            process = await trio.lowlevel.open_process(CMD, stdin=stdio, stdout=stdio, stderr=stdio)
            await process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()

        return trio_open_once
    if impl.api == TRIO_RUN:
        import trio

        async def trio_run_once() -> None:
            if pipes:
                await trio.run_process(CMD, stdin=b"", capture_stdout=True, capture_stderr=True)
            else:
                await trio.run_process(CMD, stdin=stdio, stdout=stdio, stderr=stdio)

        return trio_run_once
    if impl.api == ANYIO_OPEN:
        import anyio

        async def anyio_open_once() -> None:
            async with await anyio.open_process(
                CMD, stdin=stdio, stdout=stdio, stderr=stdio
            ) as process:
                await process.wait()

        return anyio_open_once
    if impl.api in (AIOPROC_RUN, ANYIO_RUN):
        import anyio

        import aioproc

        # The same call: aioproc.run_process is a drop-in for anyio's.
        run_process: Callable[..., Awaitable[object]] = (
            aioproc.run_process if impl.api == AIOPROC_RUN else anyio.run_process
        )

        async def run_process_once() -> None:
            if pipes:
                await run_process(CMD, input=b"")
            else:
                await run_process(CMD, stdin=stdio, stdout=stdio, stderr=stdio)

        return run_process_once
    raise LookupError(impl.name)


def _popen_once(pipes: bool) -> None:
    stdio = subprocess.PIPE if pipes else subprocess.DEVNULL
    with subprocess.Popen(CMD, stdin=stdio, stdout=stdio, stderr=stdio) as process:
        process.wait()


def _posix_spawn_once(pipes: bool) -> None:
    if pipes:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        child: tuple[int, ...] = (in_r, out_w, err_w)
        ours: tuple[int, ...] = (in_w, out_r, err_r)
    else:
        null = devnull()
        child, ours = (null, null, null), ()
    actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(child)]
    try:
        pid = os.posix_spawn(CMD[0], CMD, os.environ, file_actions=actions)
    finally:
        for fd in set(child):
            os.close(fd)
    os.waitpid(pid, 0)
    for fd in ours:
        os.close(fd)


def run(impl: Impl, params: dict[str, Any]) -> dict[str, float]:
    pipes = params["stdio"] == "pipes"
    seconds: float = params["seconds"]
    minimum: int = params["min_spawns"]
    hold_heap(params["heap_mb"])

    if impl.loop is None:
        once = _popen_once if impl == LIMIT_POPEN else _posix_spawn_once
        for _ in range(WARMUP):
            once(pipes)
        start, cpu, count = time.perf_counter(), cpu_seconds(), 0
        while count < minimum or time.perf_counter() - start < seconds:
            once(pipes)
            count += 1
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    else:
        spawn_once = _async_spawner(impl, pipes)

        async def main() -> tuple[float, float, int]:
            for _ in range(WARMUP):
                await spawn_once()
            start, cpu, count = time.perf_counter(), cpu_seconds(), 0
            while count < minimum or time.perf_counter() - start < seconds:
                await spawn_once()
                count += 1
            return time.perf_counter() - start, cpu_seconds() - cpu, count

        elapsed, cpu, count = run_on(impl.loop, main)
    return {"rate": count / elapsed, "cpu_us": cpu / count * 1e6, "spawns": count}


MEASUREMENT = Measurement(
    name="spawn",
    title="Spawn rate: sequential spawn + wait of /bin/true",
    impls=(*open_style(), *aioproc_run_style(), *run_style(), LIMIT_POPEN, LIMIT_POSIX_SPAWN),
    reference=LIMIT_POPEN,
    metrics=(
        Metric("rate", "spawns/s", higher_is_better=True),
        Metric("cpu_us", "parent CPU µs/spawn", higher_is_better=False, fmt="{:,.0f}"),
    ),
    cases=cases,
    run=run,
    notes=(
        "pipes: stdin, stdout and stderr are pipes; devnull: all three are /dev/null.",
        "Parent CPU is getrusage(RUSAGE_SELF) user+sys over the timed loop (all threads of "
        "the parent, not the children).",
    ),
)
