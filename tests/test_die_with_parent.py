"""``die_with_parent``: a child that gets a signal when the process that spawned it dies.

A helper Python process spawns the child and is then killed with SIGKILL; the
child is not ours, so the ``strays`` fixture kills it by pid at the end should
it survive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import aioproc
from aioproc import Process
from aioproc._spawn import _request

from .helpers import Strays, helper_code, py


async def _spawn_then_kill_the_helper(
    anyio_backend: object,
    engine: str,
    strays: Strays,
    command: list[str],
    option: object,
    ready: Path | None = None,
) -> int:
    """A helper opens ``command`` with ``die_with_parent=option`` and is SIGKILLed; return its pid.

    With ``ready``, the helper is killed only once the child has made that file.
    """
    body = (
        f"child = await aioproc.open_process({command!r}, die_with_parent={option!r}, "
        f"stdin=aioproc.DEVNULL, stdout=aioproc.DEVNULL, engine={engine!r})\n"
        "print(child.pid, flush=True)\n"
        "await anyio.sleep(60)\n"
    )
    async with aioproc.open_process(helper_code(anyio_backend, body)) as helper:
        assert helper.stdout is not None
        pid = strays.add(int(await anext(helper.stdout.lines())))
        assert strays.alive(pid)
        with anyio.fail_after(30):
            while ready is not None and not ready.exists():
                await anyio.sleep(0.01)
        helper.kill()
        assert await helper.wait() == -signal.SIGKILL
    return pid


async def _gone_within(strays: Strays, pid: int, seconds: float) -> bool:
    with anyio.move_on_after(seconds):
        while strays.alive(pid):
            await anyio.sleep(0.01)
        return True
    return False


async def test_the_child_dies_when_its_parent_is_killed(
    anyio_backend: object, engine: str, strays: Strays
) -> None:
    pid = await _spawn_then_kill_the_helper(anyio_backend, engine, strays, ["sleep", "60"], True)
    assert await _gone_within(strays, pid, 2)


async def test_without_it_the_child_lives_on(anyio_backend: object, strays: Strays) -> None:
    """The control case: the test above proves something only if this child survives."""
    pid = await _spawn_then_kill_the_helper(anyio_backend, "native", strays, ["sleep", "60"], False)
    await anyio.sleep(0.2)
    assert strays.alive(pid)


async def test_a_chosen_signal_is_sent(
    anyio_backend: object, engine: str, strays: Strays, tmp_path: Path
) -> None:
    log, ready = tmp_path / "log", tmp_path / "ready"
    code = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGUSR1, lambda *a: (open({str(log)!r}, 'w').write('USR1'), sys.exit()))\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    pid = await _spawn_then_kill_the_helper(
        anyio_backend, engine, strays, py(code), int(signal.SIGUSR1), ready=ready
    )
    # Longer than for SIGKILL: this child runs Python to leave, on a loaded machine.
    assert await _gone_within(strays, pid, 10)
    assert log.read_text() == "USR1"


async def test_a_child_of_a_living_parent_runs_normally(anyio_backend: object, engine: str) -> None:
    result = await aioproc.run_process(["sh", "-c", "echo ok"], die_with_parent=True, engine=engine)
    assert result.stdout == b"ok\n"
    async with aioproc.open_process(
        ["sleep", "60"], die_with_parent=signal.SIGTERM, process_group=0, engine=engine
    ) as process:
        process.terminate()
        assert await process.wait() == -signal.SIGTERM


def test_the_race_with_a_parent_dying_first_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the parent died between fork and prctl, getppid() differs: the child leaves at once."""
    monkeypatch.setattr(os, "getpid", lambda: 1)  # the pid the child will compare with
    set_death_signal = _request._die_with_parent(signal.SIGKILL)
    monkeypatch.undo()
    child = subprocess.Popen(["sleep", "60"], preexec_fn=set_death_signal)
    try:
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("value", [0, -1, 1000, "KILL", 1.5])
async def test_bad_values_are_refused(anyio_backend: object, value: object) -> None:
    with pytest.raises(ValueError, match="die_with_parent must be True, False or a signal"):
        await aioproc.open_process(["true"], die_with_parent=value)  # type: ignore[arg-type]


async def test_elsewhere_than_linux_it_is_refused(
    anyio_backend: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(NotImplementedError, match="die_with_parent needs Linux"):
        await aioproc.open_process(["true"], die_with_parent=True)
    await aioproc.run_process(["true"], die_with_parent=False)  # off: allowed anywhere


async def test_it_adds_no_fd_and_works_in_many_children(anyio_backend: object) -> None:
    processes: list[Process] = []
    try:
        for _ in range(20):
            processes.append(
                await aioproc.open_process(["true"], die_with_parent=True, stdin=subprocess.DEVNULL)
            )
    finally:
        for process in processes:
            await process.aclose()
    assert [process.returncode for process in processes] == [0] * 20
