"""6. Detach: start a program that outlives us, and time until its pid is known.

Runs only once ``aioproc.detach`` exists; until then the table says so. The
aioproc rows assume ``await aioproc.detach(cmd)`` returns the pid of the
detached program. The others, for comparison:

* ``Popen(cmd, start_new_session=True)``, timed until it returns (reference);
  it is reaped afterwards, outside the timing, or it would stay a zombie;
* the classic double fork, as python-daemon does it: fork, ``setsid``, fork
  again and exec in the grandchild, which reports its pid through a pipe; the
  intermediate child exits and is reaped outside the timing.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._core import Case, Impl, Measurement, Metric, Mode, devnull, run_on

CMD = ["/bin/true"]
WARMUP = 3

DETACH = "aioproc.detach"
REFERENCE = Impl("Popen(start_new_session=True)")
DOUBLE_FORK = Impl("double fork + setsid + exec (python-daemon style)")


def cases(mode: Mode) -> list[Case]:
    count = {"full": 500, "quick": 100, "smoke": 3}[mode]
    return [Case(f"{count} detaches of /bin/true", {"count": count})]


def _double_fork() -> tuple[int, float]:
    """Return the pid of a detached /bin/true and the seconds it took to learn it."""
    start = time.perf_counter()
    read_fd, write_fd = os.pipe()
    middle = os.fork()
    if middle == 0:  # the intermediate child: never return from here
        try:
            os.setsid()
            pid = os.fork()
            if pid == 0:
                null = devnull()
                for target in range(3):
                    os.dup2(null, target)
                os.execv(CMD[0], CMD)
            os.write(write_fd, str(pid).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    data = b""
    while chunk := os.read(read_fd, 64):
        data += chunk
    elapsed = time.perf_counter() - start
    os.close(read_fd)
    os.waitpid(middle, 0)
    return int(data), elapsed


def _popen() -> tuple[int, float]:
    null = subprocess.DEVNULL
    start = time.perf_counter()
    process = subprocess.Popen(CMD, stdin=null, stdout=null, stderr=null, start_new_session=True)
    elapsed = time.perf_counter() - start
    process.wait()
    return process.pid, elapsed


def _async_detach() -> Callable[[], Awaitable[int]]:
    import aioproc

    async def aioproc_detach() -> int:
        detached = await aioproc.detach(CMD)
        return detached.pid

    return aioproc_detach


def run(impl: Impl, params: dict[str, Any]) -> dict[str, float]:
    count: int = params["count"]
    if impl.loop is None:
        once = _popen if impl == REFERENCE else _double_fork
        for _ in range(WARMUP):
            once()
        total = sum(once()[1] for _ in range(count))
    else:
        detach = _async_detach()

        async def main() -> float:
            for _ in range(WARMUP):
                await detach()
            total = 0.0
            for _ in range(count):
                start = time.perf_counter()
                await detach()
                total += time.perf_counter() - start
            return total

        total = run_on(impl.loop, main)
    return {"us": total / count * 1e6}


MEASUREMENT = Measurement(
    name="detach",
    title="Detach: time until the pid of a detached program is known",
    impls=(
        Impl(DETACH, "asyncio"),
        Impl(DETACH, "uvloop"),
        Impl(DETACH, "trio"),
        REFERENCE,
        DOUBLE_FORK,
    ),
    reference=REFERENCE,
    metrics=(Metric("us", "µs to pid", higher_is_better=False, fmt="{:.0f}"),),
    cases=cases,
    run=run,
    requires="detach",
)
