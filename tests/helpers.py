"""What the tests inspect: fds, children, threads, and a few tiny child programs."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

import anyio

import aioproc

PY = sys.executable


def open_fds() -> set[int]:
    """The fds open in this process (without the one listdir itself uses)."""
    fds = {int(name) for name in os.listdir("/proc/self/fd")}
    return {fd for fd in fds if _is_open(fd)}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def children_of_us() -> dict[int, str]:
    """Our direct children, by pid, with their state (``Z`` for a zombie)."""
    me = os.getpid()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == me:
            found[int(entry)] = state
    return found


def thread_count() -> int:
    """Threads of this process, as the kernel counts them, but for trio's I/O thread.

    anyio runs trio tests in guest mode, where trio waits for I/O in a thread of
    its own thread cache ("Trio thread N") that comes and goes on its own.
    """
    trios = sum(thread.name.startswith("Trio thread") for thread in threading.enumerate())
    return len(os.listdir("/proc/self/task")) - trios


def python_threads() -> int:
    return threading.active_count()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def wait_until(predicate: Callable[[], object], within: float = 30.0) -> None:
    """Poll ``predicate`` until it is true; ``within`` bounds the wait, it measures nothing."""
    with anyio.fail_after(within):
        while not predicate():
            await anyio.sleep(0.005)


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


async def running(pid: int, program: str, within: float = 30.0) -> None:
    """Wait until ``pid`` runs ``program`` (its ``/proc`` name): past any wrapper's exec.

    A signal sent earlier reaches the wrapper (a Python that resets dispositions,
    or a shell), which may die of it differently; a fixed sleep is not enough on
    a loaded machine.
    """
    await wait_until(lambda: _comm(pid) == program, within)


def py(code: str) -> list[str]:
    """A command running ``code`` in a fresh Python."""
    return [PY, "-c", code]


def with_default_signals(command: list[str], *signals: int) -> list[str]:
    """``command``, run with ``signals`` at their default disposition and unblocked.

    A child inherits ignored dispositions and the blocked mask, and a shell will
    not undo them (a suite started in the background has SIGINT ignored), so a
    test that kills a child by one of these signals resets it first.
    """
    catchable = [sig for sig in signals if sig not in (signal.SIGKILL, signal.SIGSTOP)]
    if not catchable:
        return command
    numbers = ", ".join(str(int(sig)) for sig in catchable)
    return (
        py(
            "import os, signal, sys\n"
            f"for sig in ({numbers},):\n"
            "    signal.signal(sig, signal.SIG_DFL)\n"
            f"signal.pthread_sigmask(signal.SIG_UNBLOCK, ({numbers},))\n"
            "os.execvp(sys.argv[1], sys.argv[1:])\n"
        )
        + command
    )


def soak() -> bool:
    """Whether the long soak mode was asked for (``AIOPROC_SOAK=1``)."""
    return os.environ.get("AIOPROC_SOAK", "") not in ("", "0")


def helper_code(anyio_backend: object, body: str) -> list[str]:
    """A Python command that runs ``body`` (the inside of ``async def main()``) on our loop."""
    if isinstance(anyio_backend, tuple):
        run = "anyio.run(main, backend='asyncio', backend_options={'loop_factory': uvloop.new_event_loop})"
    else:
        run = f"anyio.run(main, backend={anyio_backend!r})"
    lines = "\n".join(f"    {line}" for line in body.strip().splitlines())
    return py(
        f"import anyio, aioproc, os, signal, sys, time, uvloop\nasync def main():\n{lines}\n{run}\n"
    )


def proc_status(pid: int) -> dict[str, str]:
    """``/proc/<pid>/status`` as a dict (``PPid``, ``SigIgn``, ``SigBlk``, ...)."""
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)


def proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name: state is [0], ppid [1]."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if it is gone or a zombie.

    With the pid, it names one process: a recycled pid has a later start time.
    """
    try:
        fields = proc_stat(pid)
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


class Strays:
    """Processes a test started that are not its children: each is killed, by pid, at the end."""

    def __init__(self) -> None:
        self._started: dict[int, int | None] = {}

    def add(self, pid: int) -> int:
        self._started[pid] = start_time(pid)
        return pid

    def alive(self, pid: int) -> bool:
        """Whether the process added as ``pid`` still runs (not another one, given its pid)."""
        started = self._started[pid]
        return started is not None and start_time(pid) == started

    def kill_all(self) -> None:
        for pid, started in self._started.items():
            if started is not None and start_time(pid) == started:
                os.kill(pid, signal.SIGKILL)


def echo_over_the_channel() -> int:
    """In a child of ``aioproc.fork``: send each message back until the parent is done."""
    channel = aioproc.parent_channel()
    count = 0
    for message in channel:
        channel.send(message)
        count += 1
    return count
