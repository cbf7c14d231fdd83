"""Finalizers take no lock: a Process dropped in a cycle, or as an orphan, never deadlocks.

From CPython 3.12 on, a due collection runs right after any call, including one
made while the watcher holds its (non re-entrant) locks; a finalizer that took
them hung the event loop (issue 16.1). The reproduction runs in a fresh
interpreter with a low GC threshold, so that a deadlock shows up as a child
that stops making progress, not as a hung test run.
"""

from __future__ import annotations

import gc
import os
import selectors
import subprocess
import sys
import warnings

import anyio
import pytest

import aioproc
from aioproc import _watcher

from .helpers import children_of_us

ROUNDS = 2000  # on main it hung after 342 to 1186 rounds
STUCK_AFTER = 30  # seconds without a round done: the child is deadlocked

SCRIPT = """
import gc, sys, warnings
from subprocess import DEVNULL
import anyio, uvloop
import aioproc

warnings.simplefilter("ignore", ResourceWarning)
gc.set_threshold(1)

class Job:
    def __init__(self, process):
        self.process = process
        process.job = self

async def main(rounds):
    for i in range(rounds):
        Job(await aioproc.open_process(["true"], stdin=DEVNULL))  # forgotten, in a cycle
        await aioproc.open_process(["sleep", "0.2"], stdin=DEVNULL)  # forgotten: an orphan
        await aioproc.run_process(["true"])
        print(i, flush=True)

backend = sys.argv[2]
options = {"loop_factory": uvloop.new_event_loop} if backend == "uvloop" else {}
anyio.run(
    main, int(sys.argv[1]), backend="trio" if backend == "trio" else "asyncio",
    backend_options=options,
)
print("done", flush=True)
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_dropped_processes_never_deadlock_the_loop(backend: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", SCRIPT, str(ROUNDS), backend]
    output = b""
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE) as child:
        assert child.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            while True:
                if not selector.select(STUCK_AFTER):
                    child.kill()
                    child.wait()
                    rounds = len(output.split())
                    pytest.fail(
                        f"the event loop deadlocked after {rounds} of {ROUNDS} rounds (no "
                        f"progress in {STUCK_AFTER} s): a finalizer took a lock its own thread "
                        "held (issue 16.1)"
                    )
                data = os.read(child.stdout.fileno(), 65536)
                if not data:
                    break
                output += data
    assert child.returncode == 0
    assert output.split()[-1] == b"done"


async def test_a_dropped_exited_process_is_reaped_at_the_next_call(anyio_backend: object) -> None:
    process = await aioproc.open_process(["true"], stdin=subprocess.DEVNULL)
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    pid, child = process.pid, process._child  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del process
        gc.collect()
    assert child in _watcher._dropped  # handed over, not released inside the finalizer
    # Any call into aioproc is a safe point: the child is reaped there.
    with anyio.fail_after(10):
        async with aioproc.open_process(["true"], stdin=subprocess.DEVNULL) as other:
            await other.wait()
    assert not _watcher._dropped
    assert pid not in children_of_us()
    del child
