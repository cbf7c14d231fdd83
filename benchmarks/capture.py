"""7. Capture: ``run_process`` buffers a child's whole stdout, and the loop keeps running.

The child is the writer of ``throughput`` (a Python writing 1 MiB blocks with
``os.write``). Each run captures its whole output with a run-to-completion
function while a ticker task sleeps 1 ms at a time; the longest gap between two
ticks is the longest the event loop was stalled. Total time runs from the call
to its return, child start-up included.
"""

from __future__ import annotations

import time
from typing import Any

from ._core import (
    AIOPROC_RUN,
    ANYIO_RUN,
    TRIO_RUN,
    Case,
    Impl,
    Measurement,
    Metric,
    Mode,
    run_on,
)
from .throughput import writer

TICK = 0.001  # seconds


def cases(mode: Mode) -> list[Case]:
    mib = {"full": 1024, "quick": 256, "smoke": 4}[mode]
    return [Case(f"{mib} MiB", {"mib": mib})]


def _capture(impl: Impl) -> Any:
    if impl.api == AIOPROC_RUN:
        import aioproc

        return aioproc.run_process
    if impl.api == ANYIO_RUN:
        import anyio

        return anyio.run_process
    if impl.api == TRIO_RUN:
        import trio

        async def trio_run(cmd: list[str]) -> Any:
            return await trio.run_process(cmd, capture_stdout=True, capture_stderr=True)

        return trio_run
    raise LookupError(impl.name)


def run(impl: Impl, params: dict[str, Any]) -> dict[str, float]:
    import anyio

    cmd = writer(params["mib"])
    capture = _capture(impl)
    expected = params["mib"] << 20

    async def main() -> dict[str, float]:
        worst = 0.0
        done = False

        async def tick() -> None:
            nonlocal worst
            last = time.perf_counter()
            while not done:
                await anyio.sleep(TICK)
                now = time.perf_counter()
                worst = max(worst, now - last)
                last = now

        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            await anyio.sleep(0.05)  # the ticker is running
            start = time.perf_counter()
            result = await capture(cmd)
            total = time.perf_counter() - start
            done = True
        if len(result.stdout) != expected:
            raise RuntimeError(f"captured {len(result.stdout)} bytes, expected {expected}")
        return {"total_s": total, "stall_ms": worst * 1000}

    assert impl.loop is not None
    return run_on(impl.loop, main)


IMPLS = (
    Impl(AIOPROC_RUN, "asyncio"),
    Impl(AIOPROC_RUN, "uvloop"),
    Impl(AIOPROC_RUN, "trio"),
    Impl(ANYIO_RUN, "asyncio"),
    Impl(ANYIO_RUN, "trio"),
    Impl(TRIO_RUN, "trio"),
)

MEASUREMENT = Measurement(
    name="capture",
    title="Capture a child's whole stdout with run_process: time, and the longest loop stall",
    impls=IMPLS,
    reference=Impl(ANYIO_RUN, "asyncio"),
    metrics=(
        Metric("total_s", "total s", higher_is_better=False, fmt="{:,.3f}"),
        Metric("stall_ms", "longest stall ms", higher_is_better=False, fmt="{:,.1f}"),
    ),
    cases=cases,
    run=run,
    notes=(
        "A ticker task sleeps 1 ms at a time while run_process captures the output; the "
        "longest gap between its ticks is the longest the event loop could not run.",
    ),
)
