"""What the measurement modules share: the implementations, the cases, and running a loop.

This module is imported by every worker interpreter, so it stays light: no
event-loop library is imported until an implementation asks for it.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

__all__ = [
    "LIMIT_POPEN",
    "LIMIT_POSIX_SPAWN",
    "Case",
    "Impl",
    "Measurement",
    "Metric",
    "Mode",
    "by_name",
    "cpu_seconds",
    "devnull",
    "engine_of",
    "hold_heap",
    "open_style",
    "raise_fd_limit",
    "run_on",
    "run_style",
]

Mode = Literal["full", "quick", "smoke"]
Loop = Literal["asyncio", "uvloop", "trio"]
T = TypeVar("T")


@dataclass(frozen=True)
class Impl:
    """One way of doing the thing measured: a library's API on one event loop, or a limit."""

    api: str
    """``aioproc``, ``aioproc engine=asyncio``, ``asyncio``, ``trio.run_process``, ...,
    or ``limit: ...`` for the blocking stdlib rows."""
    loop: Loop | None = None
    """The event loop it runs on; ``None`` for the blocking limits."""

    @property
    def name(self) -> str:
        """The row label, unique over the whole suite (also how a worker is told what to run)."""
        if self.loop is None or self.api.startswith("trio."):
            return self.api
        return f"{self.api} ({self.loop})"

    @property
    def is_aioproc(self) -> bool:
        return self.api.startswith("aioproc")


AIOPROC = "aioproc"
AIOPROC_ASYNCIO_ENGINE = "aioproc engine=asyncio"
ASYNCIO = "asyncio.create_subprocess_exec"
TRIO_RUN = "trio.run_process"
TRIO_OPEN = "trio.lowlevel.open_process"
ANYIO_RUN = "anyio.run_process"
ANYIO_OPEN = "anyio.open_process"
AIOPROC_RUN = "aioproc.run_process"

LIMIT_POPEN = Impl("limit: Popen")
LIMIT_POSIX_SPAWN = Impl("limit: posix_spawn + waitpid")


def open_style() -> list[Impl]:
    """Every async implementation that hands back a process with streams, aioproc first."""
    return [
        Impl(AIOPROC, "asyncio"),
        Impl(AIOPROC, "uvloop"),
        Impl(AIOPROC, "trio"),
        Impl(AIOPROC_ASYNCIO_ENGINE, "asyncio"),
        Impl(AIOPROC_ASYNCIO_ENGINE, "uvloop"),
        Impl(ASYNCIO, "asyncio"),
        Impl(ASYNCIO, "uvloop"),
        Impl(TRIO_OPEN, "trio"),
        Impl(ANYIO_OPEN, "asyncio"),
        Impl(ANYIO_OPEN, "trio"),
    ]


def run_style() -> list[Impl]:
    """The peers' run-to-completion functions (they buffer all output, so only for spawning)."""
    return [Impl(TRIO_RUN, "trio"), Impl(ANYIO_RUN, "asyncio"), Impl(ANYIO_RUN, "trio")]


def aioproc_run_style() -> list[Impl]:
    """``aioproc.run_process`` on each loop, to set beside the peers' :func:`run_style` rows."""
    return [Impl(AIOPROC_RUN, "asyncio"), Impl(AIOPROC_RUN, "uvloop"), Impl(AIOPROC_RUN, "trio")]


def engine_of(impl: Impl) -> Literal["asyncio"] | None:
    """The ``engine`` argument that aioproc's rows pass to ``open_process``."""
    return "asyncio" if impl.api == AIOPROC_ASYNCIO_ENGINE else None


def by_name(impls: list[Impl] | tuple[Impl, ...], name: str) -> Impl:
    for impl in impls:
        if impl.name == name:
            return impl
    raise LookupError(f"no implementation named {name!r}")


@dataclass(frozen=True)
class Metric:
    """One number a run reports, and how the table shows it."""

    key: str
    label: str
    higher_is_better: bool
    fmt: str = "{:,.0f}"
    ratio: bool = True
    """Show the ratio to the reference, taken within each round."""
    spread: bool = True
    """Show the minimum and maximum over the rounds."""


@dataclass(frozen=True)
class Case:
    """One setting of a measurement (a heap size, a stdio choice, N, pinned or not)."""

    label: str
    params: dict[str, Any]
    pinned: bool = False


@dataclass(frozen=True)
class Measurement:
    name: str
    title: str
    impls: tuple[Impl, ...]
    reference: Impl
    metrics: tuple[Metric, ...]
    cases: Callable[[Mode], list[Case]]
    run: Callable[[Impl, dict[str, Any]], dict[str, float]]
    """Runs in the worker interpreter: one implementation, one case, returns the metrics."""
    notes: tuple[str, ...] = ()
    requires: str | None = None
    """An ``aioproc`` attribute without which the aioproc rows cannot run."""
    plot: Callable[[Any, Any], None] | None = field(default=None)
    """``plot(measurement_result, png_path)``, for the measurements that draw one."""


def run_on(loop: Loop, main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` on a fresh event loop of the given kind and return its result."""
    if loop == "trio":
        import trio

        return trio.run(main)
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main())  # type: ignore[arg-type]
    import asyncio

    return asyncio.run(main())  # type: ignore[arg-type]


_heap: list[bytearray] = []


def hold_heap(megabytes: int) -> None:
    """Keep ``megabytes`` MiB of touched (dirty) memory alive in this process."""
    page = 4096
    for _ in range(megabytes):
        block = bytearray(1 << 20)
        block[::page] = b"\x01" * ((1 << 20) // page)
        _heap.append(block)


def cpu_seconds() -> float:
    """User plus system CPU time of this process (every thread, no children)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_fd_limit() -> None:
    """Lift the soft fd limit to the hard one: thousands of children need thousands of fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 16)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def devnull() -> int:
    return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
