"""4. Round trip: send one line to ``cat`` and read it back, many times.

Each implementation writes a 64-byte line with its send call and reads until
the 64 bytes are back with its receive call, the lowest-level calls each API
offers for this. Reported: µs per round trip, after 100 unmeasured ones. The
reference writes and reads the pipes to ``cat`` with blocking ``os.write`` and
``os.read``.
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
    ANYIO_OPEN,
    ASYNCIO,
    TRIO_OPEN,
    Case,
    Impl,
    Measurement,
    Metric,
    Mode,
    engine_of,
    open_style,
    run_on,
)

CMD = ["/bin/cat"]
LINE = b"x" * 63 + b"\n"
WARMUP = 100
CHUNK = 65536

LIMIT_RAW = Impl("limit: os.write + os.read")


def cases(mode: Mode) -> list[Case]:
    count = {"full": 10_000, "quick": 2_000, "smoke": 20}[mode]
    return [
        Case(f"{count:,} round trips, {where}", {"count": count}, pinned=pinned)
        for pinned, where in ((False, "unpinned"), (True, "pinned to CPU 0"))
    ]


# Each factory returns a coroutine function that does ``count`` round trips
# (after the warm-up) and returns the seconds they took.
Trips = Callable[[int], Awaitable[float]]


def _async_trips(impl: Impl) -> Trips:
    pipe, null = subprocess.PIPE, subprocess.DEVNULL
    size = len(LINE)
    if impl.api in (AIOPROC, AIOPROC_ASYNCIO_ENGINE):
        import aioproc

        engine = engine_of(impl)

        async def aioproc_trips(count: int) -> float:
            async with aioproc.open_process(
                CMD, stdin=pipe, stdout=pipe, stderr=null, engine=engine
            ) as process:
                stdin, stdout = process.stdin, process.stdout
                assert stdin is not None
                assert stdout is not None
                for i in range(WARMUP + count):
                    if i == WARMUP:
                        start = time.perf_counter()
                    await stdin.send(LINE)
                    got = 0
                    while got < size:
                        got += len(await stdout.receive(CHUNK))
                return time.perf_counter() - start

        return aioproc_trips
    if impl.api == ASYNCIO:
        import asyncio

        async def asyncio_trips(count: int) -> float:
            process = await asyncio.create_subprocess_exec(
                *CMD, stdin=pipe, stdout=pipe, stderr=null
            )
            stdin, stdout = process.stdin, process.stdout
            assert stdin is not None
            assert stdout is not None
            for i in range(WARMUP + count):
                if i == WARMUP:
                    start = time.perf_counter()
                stdin.write(LINE)
                await stdin.drain()
                got = 0
                while got < size:
                    got += len(await stdout.read(CHUNK))
            elapsed = time.perf_counter() - start
            stdin.close()
            await process.wait()
            return elapsed

        return asyncio_trips
    if impl.api == TRIO_OPEN:
        import trio

        async def trio_trips(count: int) -> float:
            process = await trio.lowlevel.open_process(CMD, stdin=pipe, stdout=pipe, stderr=null)
            stdin, stdout = process.stdin, process.stdout
            assert stdin is not None
            assert stdout is not None
            for i in range(WARMUP + count):
                if i == WARMUP:
                    start = time.perf_counter()
                await stdin.send_all(LINE)
                got = 0
                while got < size:
                    got += len(await stdout.receive_some(CHUNK))
            elapsed = time.perf_counter() - start
            await stdin.aclose()
            await process.wait()
            await stdout.aclose()
            return elapsed

        return trio_trips
    if impl.api == ANYIO_OPEN:
        import anyio

        async def anyio_trips(count: int) -> float:
            async with await anyio.open_process(
                CMD, stdin=pipe, stdout=pipe, stderr=null
            ) as process:
                stdin, stdout = process.stdin, process.stdout
                assert stdin is not None
                assert stdout is not None
                for i in range(WARMUP + count):
                    if i == WARMUP:
                        start = time.perf_counter()
                    await stdin.send(LINE)
                    got = 0
                    while got < size:
                        got += len(await stdout.receive(CHUNK))
                return time.perf_counter() - start

        return anyio_trips
    raise LookupError(impl.name)


def _raw_trips(count: int) -> float:
    with subprocess.Popen(
        CMD, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0
    ) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        write_fd, read_fd = process.stdin.fileno(), process.stdout.fileno()
        size = len(LINE)
        for i in range(WARMUP + count):
            if i == WARMUP:
                start = time.perf_counter()
            os.write(write_fd, LINE)
            got = 0
            while got < size:
                got += len(os.read(read_fd, CHUNK))
        elapsed = time.perf_counter() - start
    return elapsed


def run(impl: Impl, params: dict[str, Any]) -> dict[str, float]:
    count: int = params["count"]
    if impl.loop is None:
        elapsed = _raw_trips(count)
    else:
        trips = _async_trips(impl)

        async def main() -> float:
            return await trips(count)

        elapsed = run_on(impl.loop, main)
    return {"us": elapsed / count * 1e6}


MEASUREMENT = Measurement(
    name="roundtrip",
    title="Round trip: one line to cat and back",
    impls=(*open_style(), LIMIT_RAW),
    reference=LIMIT_RAW,
    metrics=(Metric("us", "µs/round trip", higher_is_better=False, fmt="{:.1f}"),),
    cases=cases,
    run=run,
    notes=("Pinned: the worker and cat share CPU 0 (taskset -c 0).",),
)
