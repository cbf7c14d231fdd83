"""Cancellation at every await point of each API leaves nothing behind.

open_process (reading and writing), run_process, fork and fork_call (with the
channel in use) and detach are each cancelled at their 1st, 2nd, 3rd ... await
point until they complete. After each run: no child of ours alive or a zombie,
the fds as before, and the exception that came out is the cancellation.

See ``cancel_sweep.py`` for how each await point is reached. The asyncio engine
awaits inside asyncio's own streams, out of the sweep's reach; it is swept by
stepping a deadline instead.
"""

from __future__ import annotations

import os

import anyio
import anyio.lowlevel
import pytest

import aioproc

from .cancel_sweep import Sweep
from .helpers import Strays, children_of_us, echo_over_the_channel, open_fds, soak

DATA = os.urandom(200_000)


@pytest.fixture
def sweep(monkeypatch: pytest.MonkeyPatch) -> Sweep:
    sweep = Sweep()
    sweep.install(monkeypatch)
    return sweep


async def talk_to_cat() -> None:
    async with aioproc.open_process(["cat"]) as cat:
        assert cat.stdin is not None
        assert cat.stdout is not None
        stdin, stdout = cat.stdin, cat.stdout
        received = bytearray()

        async def feed() -> None:
            for start in range(0, len(DATA), 50_000):
                await stdin.send(DATA[start : start + 50_000])
            await stdin.aclose()

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            async for chunk in stdout:
                received += chunk
        assert await cat.wait() == 0
    assert received == DATA


async def run_through_cat() -> None:
    result = await aioproc.run_process(["cat"], input=DATA)
    assert result.stdout == DATA


async def read_lines() -> None:
    # A slow producer, so that most reads have to wait: many await points.
    script = "for i in $(seq 1 40); do echo $i; sleep 0.002; done"
    async with aioproc.open_process(["sh", "-c", script]) as child:
        assert child.stdout is not None
        lines = [line async for line in child.stdout.lines()]
        assert lines == [f"{i}\n".encode() for i in range(1, 41)]


async def stop_a_stubborn_child() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
    with pytest.raises(KeyError):
        async with aioproc.open_process(["python3", "-c", code], grace=0.05) as process:
            assert process.stdout is not None
            await process.stdout.receive()
            raise KeyError("leave early")


def square(x: int) -> int:
    return x * x


async def call_a_fork() -> None:
    assert await aioproc.fork_call(square, 12, on_threads="allow") == 144


async def talk_to_a_fork() -> None:
    async with aioproc.fork(echo_over_the_channel, on_threads="allow") as child:
        for index in range(20):
            await child.channel.send(("ping", index, b"x" * 1000))
            assert await child.channel.receive() == ("ping", index, b"x" * 1000)
        await child.channel.send_eof()
        assert await child.result() == 20


@pytest.mark.parametrize(
    "scenario",
    [talk_to_cat, run_through_cat, read_lines, stop_a_stubborn_child, call_a_fork, talk_to_a_fork],
)
async def test_cancel_at_every_await(
    anyio_backend: object, sweep: Sweep, scenario: object, record_property: object
) -> None:
    # Timing decides which reads must wait, so each run may meet other await
    # points: the soak mode sweeps each scenario again and again.
    for _ in range(10 if soak() else 1):
        swept = await sweep.run(scenario)  # type: ignore[arg-type]
        assert swept > 0
        record_property("await_points", swept)  # type: ignore[operator]
        print(f"{scenario.__name__}: {swept} await points swept")  # type: ignore[attr-defined]


async def test_detach_cancelled_at_every_await(
    anyio_backend: object, sweep: Sweep, strays: Strays
) -> None:
    """A detach cancelled before it forks starts nothing; after, it still hands the pid over."""
    started: list[int] = []

    async def detach_one() -> None:
        detached = await aioproc.detach(["sleep", "30"])
        started.append(strays.add(detached.pid))
        await anyio.lowlevel.checkpoint()

    swept = await sweep.run(detach_one)
    assert swept > 0
    assert started, "no run got as far as the pid"
    print(f"detach: {swept} await points swept")


async def test_asyncio_engine_cancelled_at_stepped_deadlines(anyio_backend: object) -> None:
    if anyio_backend == "trio":
        return  # there is no asyncio engine on trio; nothing to sweep
    # libuv keeps a /dev/null fd per loop (its EMFILE reserve), opened the first
    # time a spawn gets that far: let that happen before counting, with a whole run
    # (a run cancelled after 0.5 ms, as here before, may not get that far under load:
    # CI, 3.11, uvloop, where the reserve then showed up as a leak).
    await aioproc.run_process(["cat"], input=DATA, engine="asyncio")
    await anyio.sleep(0.1)
    fds, children = open_fds(), children_of_us()
    delay = 0.0
    while True:
        with anyio.move_on_after(delay) as scope:
            result = await aioproc.run_process(["cat"], input=DATA, engine="asyncio")
            assert result.stdout == DATA
        with anyio.move_on_after(5):
            while open_fds() != fds or children_of_us() != children:
                await anyio.sleep(0.005)
        assert open_fds() == fds, f"cancelled after {delay} s: fds leaked"
        assert children_of_us() == children, f"cancelled after {delay} s: children left"
        if not scope.cancelled_caught:
            break
        delay += 0.0005
