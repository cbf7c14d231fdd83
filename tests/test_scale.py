"""Thousands of children at once, and running out of fds, on every backend."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import anyio
import pytest

import aioproc

from .helpers import children_of_us, open_fds, thread_count

# Each child holds three of our fds (two pipes and a pidfd): 5,000 is about as many as
# the 20,000 fds RLIMIT_NOFILE allows here, so the soak mode does not go higher.
COUNT = 5_000


async def test_thousands_at_once(anyio_backend: object) -> None:
    """Every child runs until we close its stdin, then exits with its own status."""
    fds, threads = open_fds(), thread_count()
    processes: list[aioproc.Process] = []
    peak_threads = 0
    try:
        for index in range(COUNT):
            processes.append(
                await aioproc.open_process(
                    # One process each (read is a shell builtin): 5,000 children
                    # must fit in pid_max (32768 here) twice over, as CI runs two
                    # suites at once.
                    ["sh", "-c", 'read line; exit "$1"', "sh", str(index % 256)],
                    stderr=subprocess.STDOUT,
                )
            )
        peak_threads = thread_count()
        assert len(children_of_us()) == COUNT
        for process in processes:
            assert process.stdin is not None
            await process.stdin.aclose()
        for index, process in enumerate(processes):
            assert await process.wait() == index % 256
    finally:
        with anyio.CancelScope(shield=True):
            for process in processes:
                await process.aclose()
    print(f"\npeak concurrent children: {COUNT}; threads {threads} -> {peak_threads}")
    if aioproc.child_watcher() == "pidfd":
        assert peak_threads == threads
    with anyio.move_on_after(30):
        while open_fds() != fds or thread_count() != threads:
            await anyio.sleep(0.01)
    assert open_fds() == fds
    assert thread_count() == threads, [t.name for t in threading.enumerate()]
    assert not children_of_us()


EMFILE_SCRIPT = r"""
import errno, json, os, resource, sys
import anyio, aioproc

def fds():
    return len(os.listdir("/proc/self/fd"))

async def main():
    resource.setrlimit(resource.RLIMIT_NOFILE, (fds() + 40, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    running = []
    error = None
    while True:
        before = fds()
        try:
            running.append(await aioproc.open_process(["cat"]))
        except OSError as exc:
            error = exc
            break
    after = fds()
    answers = []
    for process in running:
        await process.stdin.send(b"still here\n")
        answers.append(await process.stdout.receive())
        await process.aclose()
    print(json.dumps({
        "errno": error.errno, "message": str(error), "fds_before": before, "fds_after": after,
        "running": len(running), "answers_ok": all(a == b"still here\n" for a in answers),
        "codes": sorted({p.returncode for p in running}),
    }))

backend = sys.argv[1]
options = {}
if backend == "uvloop":
    import uvloop
    backend, options = "asyncio", {"loop_factory": uvloop.new_event_loop}
anyio.run(main, backend=backend, backend_options=options)
"""


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_running_out_of_fds(backend: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", EMFILE_SCRIPT, backend], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["errno"] == 24, report  # EMFILE
    assert "Too many open files" in report["message"]
    assert report["fds_after"] == report["fds_before"], "the failed spawn leaked fds"
    assert report["running"] > 0
    assert report["answers_ok"], "children started before the failure stopped working"
    assert report["codes"] == [0]
