"""Closing under a reader, resuming a cancelled communicate(), and plain asyncio cancellation.

Issue 16, items 2 (communicate hangs when another task closes the process), 4
(a cancelled communicate(input) retried), 7 (stop() under ``Task.cancel()``
sent twice) and 9 (``receive()`` after ``aclose()``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
from typing import Any

import anyio
import anyio.abc
import pytest
import uvloop
from anyio.lowlevel import checkpoint

import aioproc

from .conftest import BACKENDS
from .helpers import pid_alive, py

WAIT = 30  # seconds: a bound on waiting for an event, never an outcome

ASYNCIO_BACKENDS = pytest.mark.parametrize(
    "anyio_backend",
    [BACKENDS["asyncio"], ("asyncio", {"loop_factory": uvloop.new_event_loop})],
    ids=["asyncio", "uvloop"],
)

# A child that ignores SIGTERM, and says so once it does.
STUBBORN = py(
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
    "time.sleep(60)\n"
)


# -- 16.2: closing the process wakes communicate() ---------------------------------------


async def test_aclose_from_another_task_wakes_communicate(engine: str) -> None:
    for _ in range(10):
        process = await aioproc.open_process(
            ["sleep", "30"], stdin=subprocess.DEVNULL, engine=engine
        )
        outcome: list[str] = []

        async def talk(process: aioproc.Process = process, outcome: list[str] = outcome) -> None:
            try:
                await process.communicate()
            except anyio.ClosedResourceError:
                outcome.append("closed")
            else:
                outcome.append("returned")

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(talk)
                await anyio.wait_all_tasks_blocked()
                process.terminate()
                await process.aclose()
        assert outcome == ["closed"]
        assert process.returncode == -signal.SIGTERM


async def test_stop_from_another_task_ends_run_process(engine: str) -> None:
    for _ in range(10):
        ended: list[type[BaseException]] = []

        async def run(
            *, task_status: anyio.abc.TaskStatus[Any], ended: list[type[BaseException]] = ended
        ) -> None:
            try:
                await aioproc.run_process(["yes"], engine=engine, task_status=task_status)  # type: ignore[arg-type]
            except (anyio.ClosedResourceError, subprocess.CalledProcessError) as exc:
                ended.append(type(exc))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                process = await tg.start(run)
                await process.stop()
        assert len(ended) == 1
        assert process.returncode == -signal.SIGTERM


async def test_communicate_returns_when_another_task_reaps_the_child(engine: str) -> None:
    # No pipes: communicate() waits on the exit alone, and wait() in another task
    # reaps the child and closes the exit fd under it.
    process = await aioproc.open_process(
        ["sleep", "0.2"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        engine=engine,
    )
    results: list[object] = []

    async def talk() -> None:
        results.append(await process.communicate())

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(talk)
            await anyio.wait_all_tasks_blocked()
            assert await process.wait() == 0
    assert results == [(None, None)]
    await process.aclose()


# -- 16.9: receive() after aclose() ------------------------------------------------------


async def test_a_closed_stream_keeps_no_read_ahead(engine: str) -> None:
    async with aioproc.open_process(["printf", "a\\nbbb"], engine=engine) as process:
        assert process.stdout is not None
        lines = process.stdout.lines()
        assert await lines.__anext__() == b"a\n"  # b"bbb" was read ahead
        await process.stdout.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await process.stdout.receive()
        with pytest.raises(anyio.ClosedResourceError):
            await lines.__anext__()
        with pytest.raises(anyio.ClosedResourceError):
            await process.stdout.read_all()


# -- 16.4: a cancelled communicate(input), retried ---------------------------------------

DATA = os.urandom(4 << 20)
# Reads nothing for a while, so the first communicate() is cancelled half-way.
SHA256 = py(
    "import hashlib, sys, time\n"
    "time.sleep(0.5)\n"
    "print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())\n"
)


async def cancel_while_feeding(process: aioproc.Process) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(process.communicate, DATA)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("again", [None, DATA, memoryview(DATA)], ids=["none", "same", "view"])
async def test_a_cancelled_communicate_resumes_its_input(engine: str, again: Any) -> None:
    async with aioproc.open_process(SHA256, engine=engine) as process:
        with anyio.fail_after(WAIT):
            await cancel_while_feeding(process)
            output, errors = await process.communicate(again)
    assert errors == b""
    assert output == hashlib.sha256(DATA).hexdigest().encode() + b"\n"


async def test_other_input_on_a_retry_is_refused(engine: str) -> None:
    async with aioproc.open_process(SHA256, engine=engine) as process:
        with anyio.fail_after(WAIT):
            await cancel_while_feeding(process)
            with pytest.raises(ValueError, match="already given other input"):
                await process.communicate(b"something else")
            output, _ = await process.communicate()
    assert output == hashlib.sha256(DATA).hexdigest().encode() + b"\n"


# -- 16.7: plain asyncio cancellation, sent twice, during a stop -------------------------


async def cancel_twice(task: asyncio.Task[None]) -> None:
    task.cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    task.cancel()


async def ready(process: aioproc.Process) -> None:
    assert process.stdout is not None
    assert await process.stdout.receive() == b"ready\n"


@ASYNCIO_BACKENDS
async def test_stop_finishes_despite_task_cancel_twice(anyio_backend: object, engine: str) -> None:
    process = await aioproc.open_process(STUBBORN, engine=engine)
    await ready(process)
    task = asyncio.ensure_future(process.stop(grace=0.5))
    await anyio.wait_all_tasks_blocked()  # in the grace period: SIGTERM sent, and ignored
    assert pid_alive(process.pid)
    await cancel_twice(task)
    with anyio.fail_after(WAIT), pytest.raises(asyncio.CancelledError):
        await task
    assert process.returncode == -signal.SIGKILL
    assert not pid_alive(process.pid)


@ASYNCIO_BACKENDS
async def test_a_cancelled_aclose_still_stops_and_reaps(anyio_backend: object, engine: str) -> None:
    process = await aioproc.open_process(STUBBORN, grace=0.5, engine=engine)
    await ready(process)
    task = asyncio.ensure_future(process.aclose())
    await anyio.wait_all_tasks_blocked()  # waiting for an exit that will not come
    task.cancel()  # aclose() now stops the child: TERM, grace, KILL
    await checkpoint()
    await anyio.wait_all_tasks_blocked()
    await cancel_twice(task)
    with anyio.fail_after(WAIT), pytest.raises(asyncio.CancelledError):
        await task
    assert process.returncode == -signal.SIGKILL
    assert not pid_alive(process.pid)


# -- 16.11: capturing large output ---------------------------------------------------------

BLOCKS = py(
    "import os, sys\n"
    "for i in range(64):\n"
    "    block = bytes([i]) * (1 << 20)\n"
    "    view = memoryview(block)\n"
    "    while view:\n"
    "        view = view[os.write(1, view):]\n"
)


async def test_large_output_is_captured_whole_and_in_order(engine: str) -> None:
    expected = b"".join(bytes([i]) * (1 << 20) for i in range(64))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        result = await aioproc.run_process(BLOCKS, engine=engine)  # type: ignore[arg-type]
        tg.cancel_scope.cancel()
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(expected).digest()
    assert len(result.stdout) == len(expected)
    assert ticks > 1  # the loop ran other tasks while the output was drained


async def test_communicate_captures_both_pipes_whole(engine: str) -> None:
    code = (
        "import os\n"
        "for i in range(16):\n"
        "    os.write(1, bytes([i]) * (1 << 20)); os.write(2, bytes([255 - i]) * (1 << 19))\n"
    )
    async with aioproc.open_process(py(code), stdin=subprocess.DEVNULL, engine=engine) as process:
        output, errors = await process.communicate()
    assert output == b"".join(bytes([i]) * (1 << 20) for i in range(16))
    assert errors == b"".join(bytes([255 - i]) * (1 << 19) for i in range(16))


@ASYNCIO_BACKENDS
async def test_a_spawn_cancelled_twice_leaves_no_child(anyio_backend: object, engine: str) -> None:
    # Wherever the two cancellations land, the spawn either completes and the
    # child is stopped and reaped, or no child is made (the leak check sees both).
    for delay in range(20):
        task = asyncio.ensure_future(aioproc.open_process(STUBBORN, grace=0.5, engine=engine))
        for _ in range(delay):
            await asyncio.sleep(0)
        await cancel_twice(task)
        with anyio.fail_after(WAIT):
            try:
                process = await task
            except asyncio.CancelledError:
                continue
        await process.stop()
