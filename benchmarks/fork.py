"""5. Fork: run a function in a forked child and get its result back, parent holding 50 MB.

``await aioproc.fork_call(func, *args)`` returns ``func(*args)`` computed in a
forked child, as soon as the result is in: the child, already in ``os._exit``, is
reaped in the background. So that this is not mistaken for a faster fork, the
rows ``aioproc.fork, result and exit`` wait for the exit too (``async with
aioproc.fork(...)`` and ``result()``). The others, for comparison:

* ``os.fork`` in a blocking loop: the child writes the pickled result to a
  pipe and ``os._exit``s, the parent reads to EOF and ``waitpid``s (reference);
* a ``multiprocessing`` ``Process`` from the ``fork`` context, the result sent
  back through a ``multiprocessing.Pipe``, then ``join()``;
* ``anyio.to_process.run_sync``, whose worker processes are started once (in
  the warm-up) and reused: a spawn-and-pickle pool, not a fork.

Every worker imports all of these libraries first, whichever it measures: a
fork costs more the larger the parent, and the parents must be alike.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._core import Case, Impl, Measurement, Metric, Mode, hold_heap, run_on

WARMUP = 3

FORK_CALL = "aioproc.fork_call"
FORK_AND_EXIT = "aioproc.fork, result and exit"
TO_PROCESS = "anyio.to_process.run_sync"
LIMIT_FORK = Impl("limit: os.fork + pipe + waitpid")
MP_FORK = Impl("multiprocessing fork Process")


def cases(mode: Mode) -> list[Case]:
    count, heap = {"full": (300, 50), "quick": (60, 50), "smoke": (3, 8)}[mode]
    return [Case(f"{count} calls, {heap} MB heap", {"count": count, "heap_mb": heap})]


def work(x: int) -> int:
    """What the child computes: small argument, small result."""
    return x + 1


def _os_fork_call(x: int) -> int:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return from here
        try:
            os.close(read_fd)
            os.write(write_fd, pickle.dumps(work(x)))
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    result: int = pickle.loads(b"".join(chunks))
    return result


def _mp_child(connection: Any, x: int) -> None:
    connection.send(work(x))
    connection.close()


def _mp_fork_call(x: int) -> int:
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_mp_child, args=(sender, x))
    process.start()
    sender.close()
    result: int = receiver.recv()
    receiver.close()
    process.join()
    return result


def _async_call(impl: Impl) -> Callable[[int], Awaitable[int]]:
    if impl.api == FORK_CALL:
        import aioproc

        fork_call = aioproc.fork_call

        async def aioproc_call(x: int) -> int:
            result: int = await fork_call(work, x)
            return result

        return aioproc_call
    if impl.api == FORK_AND_EXIT:
        import aioproc

        async def aioproc_fork(x: int) -> int:
            async with aioproc.fork(work, x) as child:
                result: int = await child.result()
            return result

        return aioproc_fork
    if impl.api == TO_PROCESS:
        import anyio.to_process

        async def to_process_call(x: int) -> int:
            return await anyio.to_process.run_sync(work, x)

        return to_process_call
    raise LookupError(impl.name)


def _same_footprint() -> None:
    """Import every library measured here, whichever one runs.

    A fork copies the parent's page tables, and the child then faults in each
    page either side writes: its cost grows with the parent's size. Each worker
    holds the same heap, and this makes the rest of it the same too, so that the
    raw ``os.fork`` is not measured in a parent lighter by anyio, trio, uvloop and
    aioproc than the parents of the others.
    """
    import asyncio  # noqa: F401
    import multiprocessing.connection  # noqa: F401

    import anyio.to_process  # noqa: F401
    import trio  # noqa: F401
    import uvloop  # noqa: F401

    import aioproc  # noqa: F401


def run(impl: Impl, params: dict[str, Any]) -> dict[str, float]:
    count: int = params["count"]
    _same_footprint()
    hold_heap(params["heap_mb"])
    if impl.loop is None:
        call = _os_fork_call if impl == LIMIT_FORK else _mp_fork_call
        for i in range(WARMUP):
            assert call(i) == i + 1
        start = time.perf_counter()
        for i in range(count):
            call(i)
        elapsed = time.perf_counter() - start
    else:
        async_call = _async_call(impl)

        async def main() -> float:
            for i in range(WARMUP):
                assert await async_call(i) == i + 1
            start = time.perf_counter()
            for i in range(count):
                await async_call(i)
            return time.perf_counter() - start

        elapsed = run_on(impl.loop, main)
    return {"rate": count / elapsed}


MEASUREMENT = Measurement(
    name="fork",
    title="Fork: call a function in a forked child, parent holding 50 MB",
    impls=(
        Impl(FORK_CALL, "asyncio"),
        Impl(FORK_CALL, "uvloop"),
        Impl(FORK_CALL, "trio"),
        Impl(FORK_AND_EXIT, "asyncio"),
        Impl(FORK_AND_EXIT, "trio"),
        Impl(TO_PROCESS, "asyncio"),
        Impl(TO_PROCESS, "trio"),
        MP_FORK,
        LIMIT_FORK,
    ),
    reference=LIMIT_FORK,
    metrics=(Metric("rate", "calls/s", higher_is_better=True),),
    cases=cases,
    run=run,
    notes=("anyio.to_process reuses warm worker processes: it does not fork per call.",),
    requires="fork_call",
)
