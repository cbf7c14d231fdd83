"""2. Concurrency curve: N children of ``sleep 0.2`` at once.

All N are started as fast as the implementation allows (one task each on the
async ones; a loop of spawns, then a loop of waits, on the blocking limits),
and the wall time runs until the last one is reaped. Ideal: 0.2 s plus N
spawns. A sampler thread records the peak thread count (itself excluded), the
peak number of open fds (its own directory fd excluded) and the peak RSS of
the parent. stdio is /dev/null, so the fds counted are what each library keeps
per child (pidfds, pipes it opened for itself, ...).
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ._core import (
    AIOPROC,
    AIOPROC_ASYNCIO_ENGINE,
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
    devnull,
    engine_of,
    open_style,
    raise_fd_limit,
    run_on,
    run_style,
)

CMD = ["/bin/sleep", "0.2"]
WARMUP_CMD = ["/bin/true"]
NULL = subprocess.DEVNULL


def cases(mode: Mode) -> list[Case]:
    sizes = {"full": (10, 100, 1000, 5000), "quick": (10, 100, 500), "smoke": (3,)}[mode]
    return [Case(f"N = {n}", {"n": n}) for n in sizes]


class Sampler:
    """Peak threads and fds of this process, sampled from /proc by a thread."""

    def __init__(self, interval: float = 0.01, fd_every: int = 5) -> None:
        self.threads = self.threads_before = _threads()
        self.fds = self.fds_before = _fds()
        self._interval = interval
        self._fd_every = fd_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(self._interval):
            self.threads = max(self.threads, _threads() - 1)
            if tick % self._fd_every == 0:
                self.fds = max(self.fds, _fds())
            tick += 1


def _threads() -> int:
    with open("/proc/self/stat", "rb") as stat:
        # Field 20 is num_threads; the command name (field 2) may hold spaces.
        return int(stat.read().rsplit(b")", 1)[1].split()[17])


def _fds() -> int:
    # listdir holds one fd of its own on the directory while it reads it.
    return len(os.listdir("/proc/self/fd")) - 1


def _async_child(impl: Impl, cmd: list[str]) -> Callable[[], Awaitable[None]]:
    """Return a coroutine function that runs one ``cmd`` to its exit."""
    if impl.api in (AIOPROC, AIOPROC_ASYNCIO_ENGINE):
        import aioproc

        engine = engine_of(impl)

        async def aioproc_child() -> None:
            async with aioproc.open_process(
                cmd, stdin=NULL, stdout=NULL, stderr=NULL, engine=engine
            ) as process:
                await process.wait()

        return aioproc_child
    if impl.api == ASYNCIO:
        import asyncio

        async def asyncio_child() -> None:
            process = await asyncio.create_subprocess_exec(
                *cmd, stdin=NULL, stdout=NULL, stderr=NULL
            )
            await process.wait()

        return asyncio_child
    if impl.api == TRIO_OPEN:
        import trio

        async def trio_open_child() -> None:
            process = await trio.lowlevel.open_process(cmd, stdin=NULL, stdout=NULL, stderr=NULL)
            await process.wait()

        return trio_open_child
    if impl.api == TRIO_RUN:
        import trio

        async def trio_run_child() -> None:
            await trio.run_process(cmd, stdin=NULL, stdout=NULL, stderr=NULL)

        return trio_run_child
    if impl.api == ANYIO_OPEN:
        import anyio

        async def anyio_open_child() -> None:
            async with await anyio.open_process(
                cmd, stdin=NULL, stdout=NULL, stderr=NULL
            ) as process:
                await process.wait()

        return anyio_open_child
    if impl.api == ANYIO_RUN:
        import anyio

        async def anyio_run_child() -> None:
            await anyio.run_process(cmd, stdin=NULL, stdout=NULL, stderr=NULL)

        return anyio_run_child
    raise LookupError(impl.name)


async def _all_at_once(loop: str, n: int, child: Callable[[], Awaitable[None]]) -> None:
    if loop == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(child)
    else:
        import asyncio

        await asyncio.gather(*(child() for _ in range(n)))


def _blocking(impl: Impl, n: int, cmd: list[str]) -> None:
    if impl == LIMIT_POPEN:
        children = [subprocess.Popen(cmd, stdin=NULL, stdout=NULL, stderr=NULL) for _ in range(n)]
        for process in children:
            process.wait()
        return
    null = devnull()
    actions = [(os.POSIX_SPAWN_DUP2, null, target) for target in range(3)]
    try:
        pids = [os.posix_spawn(cmd[0], cmd, os.environ, file_actions=actions) for _ in range(n)]
    finally:
        os.close(null)
    for pid in pids:
        os.waitpid(pid, 0)


def run(impl: Impl, params: dict[str, Any]) -> dict[str, float]:
    n: int = params["n"]
    raise_fd_limit()
    if impl.loop is None:
        _blocking(impl, 1, WARMUP_CMD)  # warm up, as the async rows do below
        with Sampler() as sampler:
            start = time.perf_counter()
            _blocking(impl, n, CMD)
            wall = time.perf_counter() - start
    else:
        loop = impl.loop
        child = _async_child(impl, CMD)
        warmup = _async_child(impl, WARMUP_CMD)

        async def main() -> tuple[float, Sampler]:
            await _all_at_once(loop, 1, warmup)
            with Sampler() as sampler:
                start = time.perf_counter()
                await _all_at_once(loop, n, child)
                wall = time.perf_counter() - start
            return wall, sampler

        wall, sampler = run_on(loop, main)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "wall_s": wall,
        "threads": sampler.threads,
        "threads_before": sampler.threads_before,
        "fds": sampler.fds,
        "fds_before": sampler.fds_before,
        "rss_mb": rss_mb,
    }


def plot(result: Any, path: Path) -> None:
    """Wall time and peak threads against N, one line per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (wall_ax, threads_ax) = plt.subplots(1, 2, figsize=(14, 6))
    tab20 = plt.get_cmap("tab20")
    colors = [tab20(i) for i in range(tab20.N)]
    for index, name in enumerate(result.impl_names()):
        points = result.curve(name, "n", ("wall_s", "threads"))
        if not points:
            continue
        xs = [x for x, _ in points]
        family = "aioproc" if name.startswith("aioproc") else name.split(":")[0]
        linestyle, marker = {"aioproc": ("-", "o"), "limit": ("--", "^")}.get(family, (":", "s"))
        style = {"color": colors[index % len(colors)], "linestyle": linestyle, "marker": marker}
        wall_ax.plot(xs, [y["wall_s"] for _, y in points], label=name, **style)
        threads_ax.plot(xs, [y["threads"] for _, y in points], label=name, **style)
    for ax, ylabel in ((wall_ax, "wall time, s (median)"), (threads_ax, "peak threads")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N children of sleep 0.2 at once")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    threads_ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(result.caption)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


MEASUREMENT = Measurement(
    name="concurrency",
    title="Concurrency curve: N children of sleep 0.2 at once",
    impls=(*open_style(), *run_style(), LIMIT_POPEN, LIMIT_POSIX_SPAWN),
    reference=LIMIT_POPEN,
    metrics=(
        Metric("wall_s", "wall s", higher_is_better=False, fmt="{:.3f}"),
        Metric("threads", "peak threads", False, fmt="{:,.0f}", ratio=False, spread=False),
        Metric("fds", "peak fds", False, fmt="{:,.0f}", ratio=False, spread=False),
        Metric("rss_mb", "peak RSS MB", False, fmt="{:,.0f}", ratio=False, spread=False),
    ),
    cases=cases,
    run=run,
    notes=(
        "stdio is /dev/null. Threads, fds and RSS are peaks of the parent (medians over rounds); "
        "threads are sampled every 10 ms, fds every 50 ms, RSS is ru_maxrss.",
    ),
    plot=plot,
)
