"""Leaving a block early stops the child: close stdin, SIGTERM, grace, SIGKILL, reap."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import anyio
import pytest

import aioproc
from aioproc import Process

from .helpers import pid_alive, py, running, with_default_signals

# A child that reports each SIGTERM on stdout and otherwise ignores it.
STUBBORN = py(
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: print('TERM', flush=True))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


async def _until_ready(process: Process) -> None:
    assert process.stdout is not None
    assert await anext(process.stdout.lines()) == b"ready\n"


async def test_cancel_kills_a_child_that_ignores_sigterm_after_grace(engine: str) -> None:
    with anyio.CancelScope() as scope:
        async with aioproc.open_process(STUBBORN, grace=0.3, engine=engine) as process:
            await _until_ready(process)
            scope.cancel()
            await anyio.sleep(60)
    assert scope.cancelled_caught
    assert process.returncode == -signal.SIGKILL
    assert process.stdout is not None
    with pytest.raises(anyio.ClosedResourceError):
        await process.stdout.receive()


async def test_sigterm_comes_before_sigkill(engine: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    code = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: open({str(log)!r}, 'a').write('TERM'))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    with anyio.move_on_after(30) as scope:
        async with aioproc.open_process(py(code), grace=0.3, engine=engine) as process:
            await _until_ready(process)
            scope.cancel()
            await anyio.sleep(60)
    assert process.returncode == -signal.SIGKILL
    assert log.read_text() == "TERM"


async def test_cancel_stops_a_polite_child_with_sigterm(engine: str) -> None:
    with anyio.move_on_after(0.2):
        async with aioproc.open_process(["sleep", "60"], engine=engine) as process:
            await process.wait()
    assert process.returncode == -signal.SIGTERM


async def test_an_exception_stops_the_child_and_propagates(engine: str) -> None:
    with pytest.raises(KeyError, match="boom"):
        async with aioproc.open_process(["sleep", "60"], engine=engine) as process:
            raise KeyError("boom")
    assert process.returncode == -signal.SIGTERM


async def test_stdin_is_closed_first(engine: str) -> None:
    # cat exits on EOF before SIGTERM can matter, if it is sent at all.
    with pytest.raises(KeyError):
        async with aioproc.open_process(["cat"], grace=5, engine=engine) as process:
            raise KeyError("leave")
    assert process.returncode in (0, -signal.SIGTERM)


@pytest.mark.parametrize("how", ["process_group", "start_new_session"])
async def test_cancel_takes_the_whole_process_group(engine: str, how: str) -> None:
    # Both the shell and its grandchild ignore SIGTERM, so only the SIGKILL to
    # the group after the grace period can end them.
    kwargs = {"process_group": 0} if how == "process_group" else {"start_new_session": True}
    script = "trap '' TERM; sleep 60 & echo $!; wait"
    with anyio.CancelScope() as scope:
        async with aioproc.open_process(
            ["sh", "-c", script], grace=0.3, engine=engine, **kwargs
        ) as process:
            assert process.stdout is not None
            grandchild = int((await anext(process.stdout.lines())).decode())
            scope.cancel()
            await anyio.sleep(60)
    assert process.returncode == -signal.SIGKILL
    with anyio.fail_after(10):
        while pid_alive(grandchild):
            await anyio.sleep(0.01)


async def test_cancel_reaches_a_group_whose_leader_already_exited(anyio_backend: object) -> None:
    """The leader's zombie keeps the group id ours until the block is left."""
    with anyio.CancelScope() as scope:
        async with aioproc.open_process(
            ["sh", "-c", "trap '' TERM; sleep 60 & echo $!"], process_group=0, grace=0.2
        ) as process:
            assert process.stdout is not None
            grandchild = int((await anext(process.stdout.lines())).decode())
            assert await process.wait() == 0
            assert pid_alive(grandchild)
            scope.cancel()
            await anyio.sleep(60)
    with anyio.fail_after(10):
        while pid_alive(grandchild):
            await anyio.sleep(0.01)


async def test_without_a_group_only_the_child_is_signalled(engine: str) -> None:
    async with aioproc.open_process(["sleep", "60"], engine=engine) as bystander:
        with anyio.move_on_after(0.2):
            async with aioproc.open_process(["sleep", "60"], engine=engine) as process:
                await process.wait()
        assert process.returncode == -signal.SIGTERM
        assert bystander.returncode is None
        bystander.kill()


async def test_deliver_cancel_replaces_the_default(engine: str) -> None:
    calls: list[int] = []

    async def interrupt(process: Process) -> None:
        calls.append(process.pid)
        process.send_signal(signal.SIGINT)

    with anyio.CancelScope() as scope:
        async with aioproc.open_process(
            with_default_signals(["sleep", "60"], signal.SIGINT),
            deliver_cancel=interrupt,
            engine=engine,
        ) as process:
            await running(process.pid, "sleep")  # the wrapper has reset SIGINT
            scope.cancel()
            await process.wait()
    assert calls == [process.pid]
    assert process.returncode == -signal.SIGINT


async def test_deliver_cancel_that_fails_gets_the_child_killed(engine: str) -> None:
    async def broken(process: Process) -> None:
        raise OSError("no way")

    with pytest.raises(OSError, match="no way"), anyio.move_on_after(0.2):
        async with aioproc.open_process(
            ["sleep", "60"], deliver_cancel=broken, engine=engine
        ) as process:
            await process.wait()
    assert process.returncode == -signal.SIGKILL


async def test_stop_now(engine: str) -> None:
    async with aioproc.open_process(STUBBORN, engine=engine) as process:
        await _until_ready(process)
        await process.stop(grace=0.2)
        assert process.returncode == -signal.SIGKILL
        await process.stop()  # again: nothing left to do


async def test_aclose_does_not_deadlock_on_a_full_pipe(engine: str) -> None:
    # yes writes forever; nobody reads. aclose() closes stdout first, so the
    # next write fails with SIGPIPE and the child exits.
    process = await aioproc.open_process(["yes"], engine=engine)
    with anyio.fail_after(10):
        await process.aclose()
    if engine == "asyncio" and _on_uvloop():
        # uvloop's pipes are socketpairs: closing one with unread data resets
        # the connection, so yes may see ECONNRESET (and exit 1), not EPIPE.
        assert process.returncode in (-signal.SIGPIPE, 1)
    else:
        assert process.returncode == -signal.SIGPIPE


def _on_uvloop() -> bool:
    return type(asyncio.get_running_loop()).__module__.startswith("uvloop")


async def test_cancelled_aclose_stops_and_reaps(engine: str) -> None:
    process = await aioproc.open_process(["sleep", "60"], engine=engine)
    with anyio.move_on_after(0.2) as scope:
        await process.aclose()
    assert scope.cancelled_caught
    assert process.returncode == -signal.SIGTERM


async def test_a_second_cancellation_does_not_cut_the_shutdown_short(engine: str) -> None:
    with anyio.CancelScope() as outer:
        with anyio.CancelScope() as inner:
            async with aioproc.open_process(STUBBORN, grace=0.3, engine=engine) as process:
                await _until_ready(process)
                inner.cancel()
                outer.cancel()
                await anyio.sleep(60)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize(
    ("grace", "error"), [(-1, ValueError), ("5", TypeError), (None, TypeError)]
)
async def test_bad_grace(engine: str, grace: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="grace"):
        await aioproc.open_process(["true"], grace=grace, engine=engine)  # type: ignore[arg-type]
