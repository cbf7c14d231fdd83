"""3. Pipe throughput: read a child's stdout as fast as it can write.

The child is a second Python that writes one 1 MiB bytes object over and over
with ``os.write``; every implementation reads it in chunks of up to 64 KiB with
its usual receive call. The clock starts at the first chunk, so the child's
start-up is not counted, and stops at EOF. MB/s is 10**6 bytes per second.

The reference reads the same child with ``os.read(fd, 65536)`` in a blocking
loop on a ``Popen`` pipe. A second limit row does the same with the pipe
enlarged to 1 MiB (``F_SETPIPE_SZ``), which no implementation here does.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
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

CHUNK = 65536
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
WRITER = """\
import os, sys
block = memoryview(bytes(1 << 20))
for _ in range(int(sys.argv[1])):
    view = block
    while view:
        view = view[os.write(1, view):]
"""

LIMIT_RAW = Impl("limit: os.read 64 KiB")
LIMIT_RAW_BIG_PIPE = Impl("limit: os.read 64 KiB, 1 MiB pipe")


def cases(mode: Mode) -> list[Case]:
    mib = {"full": 1024, "quick": 128, "smoke": 4}[mode]
    return [
        Case(f"{mib} MiB, {where}", {"mib": mib}, pinned=pinned)
        for pinned, where in ((False, "unpinned"), (True, "pinned to CPU 0"))
    ]


def writer(mib: int) -> list[str]:
    return [sys.executable, "-S", "-c", WRITER, str(mib)]


class Counter:
    """Bytes after the first chunk, and the time from the first chunk to EOF."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.bytes = -1

    def add(self, size: int) -> None:
        if self.bytes < 0:
            self.start = time.perf_counter()
            self.bytes = 0
        else:
            self.bytes += size

    def stop(self) -> None:
        """Call at EOF, before closing anything."""
        self.end = time.perf_counter()

    def result(self) -> dict[str, float]:
        if self.bytes <= 0 or self.end <= self.start:
            raise RuntimeError(f"too little was read to time: {self.bytes} bytes after the first")
        return {"mb_s": self.bytes / (self.end - self.start) / 1e6, "bytes": self.bytes + 0.0}


def _async_reader(impl: Impl, cmd: list[str], counter: Counter) -> Callable[[], Awaitable[None]]:
    null = subprocess.DEVNULL
    pipe = subprocess.PIPE
    if impl.api in (AIOPROC, AIOPROC_ASYNCIO_ENGINE):
        import aioproc

        engine = engine_of(impl)

        async def aioproc_read() -> None:
            async with aioproc.open_process(
                cmd, stdin=null, stdout=pipe, stderr=null, engine=engine
            ) as process:
                assert process.stdout is not None
                async for chunk in process.stdout:
                    counter.add(len(chunk))
                counter.stop()

        return aioproc_read
    if impl.api == ASYNCIO:
        import asyncio

        async def asyncio_read() -> None:
            process = await asyncio.create_subprocess_exec(
                *cmd, stdin=null, stdout=pipe, stderr=null
            )
            assert process.stdout is not None
            while chunk := await process.stdout.read(CHUNK):
                counter.add(len(chunk))
            counter.stop()
            await process.wait()

        return asyncio_read
    if impl.api == TRIO_OPEN:
        import trio

        async def trio_read() -> None:
            process = await trio.lowlevel.open_process(cmd, stdin=null, stdout=pipe, stderr=null)
            assert process.stdout is not None
            async with process.stdout:
                while chunk := await process.stdout.receive_some(CHUNK):
                    counter.add(len(chunk))
                counter.stop()
            await process.wait()

        return trio_read
    if impl.api == ANYIO_OPEN:
        import anyio

        async def anyio_read() -> None:
            async with await anyio.open_process(
                cmd, stdin=null, stdout=pipe, stderr=null
            ) as process:
                assert process.stdout is not None
                async for chunk in process.stdout:
                    counter.add(len(chunk))
                counter.stop()

        return anyio_read
    raise LookupError(impl.name)


def _raw_read(cmd: list[str], counter: Counter, pipe_size: int | None) -> None:
    read_fd, write_fd = os.pipe()
    try:
        if pipe_size is not None:
            fcntl.fcntl(read_fd, F_SETPIPE_SZ, pipe_size)
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=write_fd)
    finally:
        os.close(write_fd)
    try:
        while chunk := os.read(read_fd, CHUNK):
            counter.add(len(chunk))
        counter.stop()
    finally:
        os.close(read_fd)
        process.wait()


def run(impl: Impl, params: dict[str, Any]) -> dict[str, float]:
    cmd = writer(params["mib"])
    counter = Counter()
    if impl.loop is None:
        _raw_read(cmd, counter, 1 << 20 if impl == LIMIT_RAW_BIG_PIPE else None)
        return counter.result()
    read = _async_reader(impl, cmd, counter)

    async def main() -> dict[str, float]:
        await read()
        return counter.result()

    return run_on(impl.loop, main)


MEASUREMENT = Measurement(
    name="throughput",
    title="Pipe throughput: read a child's stdout",
    impls=(*open_style(), LIMIT_RAW, LIMIT_RAW_BIG_PIPE),
    reference=LIMIT_RAW,
    metrics=(Metric("mb_s", "MB/s", higher_is_better=True),),
    cases=cases,
    run=run,
    notes=(
        "Each implementation reads with its own receive call, up to 64 KiB at a time; "
        "the clock runs from the first chunk to EOF.",
        "Pinned: the worker and its child share CPU 0 (taskset -c 0). "
        "The run-to-completion functions are left out: they buffer the whole output.",
    ),
)
