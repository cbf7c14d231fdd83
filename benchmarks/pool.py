"""7. Pool: run small calls in 2 warm worker processes (issue 13).

Each implementation gets a pool of 2 workers and measures, in this order:

* ``cold_ms``: from creating the pool to the first call's result;
* ``rt_us``: one no-op call at a time, µs per round trip;
* ``rate``: no-op calls per second with 64 in flight;
* ``big_ms``: a call that returns 10 MB (``bytes``), ms each.

The rows are ``aioproc.ForkPool.run`` on each loop, ``anyio.to_process.run_sync``
(2 workers through its limiter), ``ProcessPoolExecutor`` with the ``fork`` and the
``forkserver`` contexts and loky's reusable executor, the last three through
``loop.run_in_executor``. The runner interleaves the rows in shuffled rounds, each
in a fresh interpreter, and takes ratios within a round. The issue's targets, as
ratios to ``anyio.to_process`` (the reference row): calls/s at least 3x (and 3x
``ProcessPoolExecutor``), round trip at most 0.8x, cold start at least 10x
faster; a 10 MB result no slower than ``ProcessPoolExecutor``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._core import Case, Impl, Measurement, Metric, Mode, run_on

FORK_POOL = "aioproc.ForkPool.run"
TO_PROCESS = "anyio.to_process.run_sync"
PPE_FORK = "ProcessPoolExecutor fork"
PPE_FORKSERVER = "ProcessPoolExecutor forkserver"
LOKY = "loky"
WORKERS = 2
IN_FLIGHT = 64
BIG = 10_000_000


def cases(mode: Mode) -> list[Case]:
    rt, rate, big = {"full": (3000, 12800, 20), "quick": (500, 2560, 5), "smoke": (5, 64, 1)}[mode]
    label = f"{rt} round trips, {rate} calls 64 in flight, {big} results of 10 MB"
    return [Case(label, {"rt": rt, "rate": rate, "big": big})]


def noop(x: int) -> int:
    return x


def big_result() -> bytes:
    return bytes(BIG)


Call = Callable[..., Awaitable[Any]]


async def _measure(call: Call, params: dict[str, Any], started: float) -> dict[str, float]:
    import anyio

    assert await call(noop, 1) == 1
    cold = time.perf_counter() - started
    for i in range(20):  # every worker warm
        await call(noop, i)
    start = time.perf_counter()
    for i in range(params["rt"]):
        await call(noop, i)
    rt = (time.perf_counter() - start) / params["rt"]

    per_task = params["rate"] // IN_FLIGHT

    async def stream() -> None:
        for i in range(per_task):
            await call(noop, i)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(IN_FLIGHT):
            tg.start_soon(stream)
    rate = per_task * IN_FLIGHT / (time.perf_counter() - start)

    assert len(await call(big_result)) == BIG
    start = time.perf_counter()
    for _ in range(params["big"]):
        await call(big_result)
    big = (time.perf_counter() - start) / params["big"]
    return {"cold_ms": cold * 1e3, "rt_us": rt * 1e6, "rate": rate, "big_ms": big * 1e3}


def run(impl: Impl, params: dict[str, Any]) -> dict[str, float]:
    # Every library imported before the clock starts, whichever row this is.
    import multiprocessing  # noqa: F401
    from concurrent.futures import ProcessPoolExecutor  # noqa: F401

    import anyio.to_process  # noqa: F401
    import loky  # noqa: F401

    import aioproc  # noqa: F401

    async def main() -> dict[str, float]:
        import anyio.lowlevel

        # anyio imports its backend for this loop at its first call (about 11 ms for
        # asyncio's): library import time, kept out of every row's cold start.
        await anyio.lowlevel.checkpoint()
        started = time.perf_counter()
        if impl.api == FORK_POOL:
            import aioproc

            async with aioproc.ForkPool(WORKERS, on_threads="allow") as pool:
                return await _measure(pool.run, params, started)
        if impl.api == TO_PROCESS:
            import anyio
            import anyio.to_process

            limiter = anyio.CapacityLimiter(WORKERS)

            async def to_process(fn: Callable[..., Any], *args: Any) -> Any:
                return await anyio.to_process.run_sync(fn, *args, limiter=limiter)

            return await _measure(to_process, params, started)
        import asyncio

        loop = asyncio.get_running_loop()
        executor: Any
        if impl.api == LOKY:
            import loky

            executor = loky.get_reusable_executor(max_workers=WORKERS)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            method = "fork" if impl.api == PPE_FORK else "forkserver"
            executor = ProcessPoolExecutor(WORKERS, multiprocessing.get_context(method))

        async def in_executor(fn: Callable[..., Any], *args: Any) -> Any:
            return await loop.run_in_executor(executor, fn, *args)

        try:
            return await _measure(in_executor, params, started)
        finally:
            executor.shutdown(wait=True)

    assert impl.loop is not None
    return run_on(impl.loop, main)


REFERENCE = Impl(TO_PROCESS, "asyncio")

MEASUREMENT = Measurement(
    name="pool",
    title="Pool: small calls in 2 warm worker processes",
    impls=(
        Impl(FORK_POOL, "asyncio"),
        Impl(FORK_POOL, "uvloop"),
        Impl(FORK_POOL, "trio"),
        REFERENCE,
        Impl(PPE_FORK, "asyncio"),
        Impl(PPE_FORKSERVER, "asyncio"),
        Impl(LOKY, "asyncio"),
    ),
    reference=REFERENCE,
    metrics=(
        Metric("rt_us", "round trip µs", higher_is_better=False, fmt="{:,.1f}"),
        Metric("rate", "calls/s, 64 in flight", higher_is_better=True),
        Metric("cold_ms", "cold start ms", higher_is_better=False, fmt="{:,.1f}"),
        Metric("big_ms", "10 MB result ms", higher_is_better=False, fmt="{:,.1f}"),
    ),
    cases=cases,
    run=run,
    notes=(
        "Targets (issue 13), as same-round ratios to anyio.to_process: calls/s >= 3x, "
        "round trip <= 0.8x, cold start >= 10x faster; calls/s >= 3x and a 10 MB result "
        "no slower than ProcessPoolExecutor.",
    ),
    requires="ForkPool",
)
