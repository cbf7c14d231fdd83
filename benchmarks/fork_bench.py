"""Fork round trips with 50 MB of heap: aioproc.fork_call against its peers.

    python benchmarks/fork_bench.py [--rounds N] [--calls N] [--heap-mb N]

One process holds the heap for the whole run (fork costs grow with the memory
of the parent: its page tables are copied). Each round runs every method
``--calls`` times, in a shuffled order; the table gives the median of the
rounds, and each ratio is taken within a round, because the machine is noisy.

* ``fork_call`` (asyncio, uvloop, trio): ``await aioproc.fork_call(os.getpid)``,
  from the call to the child's return value in the parent. It does not wait
  for the exit: the child, already in ``os._exit``, is reaped in the background.
* ``fork + exit`` (asyncio, trio): ``async with aioproc.fork(os.getpid)`` and
  ``await child.result()``, which waits for the exit as well: the same fork,
  paying for the teardown of the child as the peers below do.
* ``os.fork`` raw: ``os.fork()``, ``os._exit(0)`` in the child, ``os.waitpid``.
  No result travels: the floor for any fork.
* ``multiprocessing`` fork: ``Process(target=os.getpid)``, ``start()``, ``join()``.
* ``anyio.to_process``: ``run_sync(os.getpid)``; its workers are spawned
  interpreters kept warm between calls, so this is mostly a pickle round trip.

Warnings are silenced: after ``anyio.to_process`` has run, the parent has
threads, and both Python's ``os.fork`` and ``aioproc.fork`` say so.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import anyio
import anyio.to_process
import uvloop

import aioproc


def raw_fork(calls: int) -> None:
    for _ in range(calls):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


def mp_fork(calls: int) -> None:
    context = multiprocessing.get_context("fork")
    for _ in range(calls):
        process = context.Process(target=os.getpid)
        process.start()
        process.join()


def fork_call_on(backend: str, options: dict[str, object]) -> Callable[[int], None]:
    async def loop(calls: int) -> None:
        for _ in range(calls):
            await aioproc.fork_call(os.getpid)

    def run(calls: int) -> None:
        anyio.run(loop, calls, backend=backend, backend_options=options)

    return run


def fork_and_exit_on(backend: str) -> Callable[[int], None]:
    async def loop(calls: int) -> None:
        for _ in range(calls):
            async with aioproc.fork(os.getpid) as child:
                await child.result()

    def run(calls: int) -> None:
        anyio.run(loop, calls, backend=backend)

    return run


def to_process(calls: int) -> None:
    async def loop() -> None:
        for _ in range(calls):
            await anyio.to_process.run_sync(os.getpid)

    anyio.run(loop)


METHODS: dict[str, Callable[[int], None]] = {
    "fork_call (asyncio)": fork_call_on("asyncio", {}),
    "fork_call (uvloop)": fork_call_on("asyncio", {"loop_factory": uvloop.new_event_loop}),
    "fork_call (trio)": fork_call_on("trio", {}),
    "fork + exit (asyncio)": fork_and_exit_on("asyncio"),
    "fork + exit (trio)": fork_and_exit_on("trio"),
    "os.fork raw": raw_fork,
    "multiprocessing fork": mp_fork,
    "anyio.to_process": to_process,
}


def make_heap(megabytes: int) -> list[object]:
    """Many small objects, as a real program's heap is, touched as they are made."""
    heap: list[object] = []
    while rss_mb() < megabytes + base_rss:
        heap.extend({"n": n, "text": "x" * 100} for n in range(10_000))
    return heap


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


base_rss = 0.0


def main() -> None:
    global base_rss
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--heap-mb", type=int, default=50)
    options = parser.parse_args()
    warnings.simplefilter("ignore")

    for method in METHODS.values():  # warm up: imports, to_process's worker
        method(2)
    base_rss = rss_mb()
    heap = make_heap(options.heap_mb)
    print(
        f"CPython {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"child watcher {aioproc.child_watcher()}, heap +{rss_mb() - base_rss:.0f} MB "
        f"({len(heap)} objects), {options.rounds} rounds of {options.calls} calls"
    )

    per_call: dict[str, list[float]] = {name: [] for name in METHODS}
    ratios: dict[str, dict[str, list[float]]] = {}
    for _ in range(options.rounds):
        order = list(METHODS)
        random.shuffle(order)
        this_round = {}
        for name in order:
            start = time.perf_counter()
            METHODS[name](options.calls)
            this_round[name] = (time.perf_counter() - start) / options.calls
            per_call[name].append(this_round[name])
        for name, seconds in this_round.items():
            if name.startswith(("fork_call", "fork + exit")):
                for peer in ("os.fork raw", "multiprocessing fork", "anyio.to_process"):
                    ratio = this_round[peer] / seconds  # speed of fork_call relative to peer
                    ratios.setdefault(name, {}).setdefault(peer, []).append(ratio)

    print()
    print("| method | µs per round trip | per second |")
    print("|---|---|---|")
    for name, times in per_call.items():
        median = statistics.median(times)
        print(f"| {name} | {median * 1e6:.0f} | {1 / median:.0f} |")
    print()
    print("aioproc's speed relative to each peer (median of per-round ratios; >1 is faster):")
    print()
    print(
        "| aioproc | vs os.fork raw (target >= 0.9) "
        "| vs multiprocessing fork (target >= 1.3) | vs anyio.to_process |"
    )
    print("|---|---|---|---|")
    for name, by_peer in ratios.items():
        cells = [f"{statistics.median(by_peer[peer]):.2f}x" for peer in by_peer]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
