"""run_process: capture, check, input, timeout, cancellation and TaskGroup.start()."""

from __future__ import annotations

import os
import signal
import subprocess
from functools import partial
from pathlib import Path

import anyio
import pytest

import aioproc

from .helpers import children_of_us, open_fds, pid_alive, py


async def test_captures_stdout_and_stderr(engine: str) -> None:
    result = await aioproc.run_process("echo out; echo err >&2", engine=engine)
    assert isinstance(result, subprocess.CompletedProcess)
    assert result.args == "echo out; echo err >&2"
    assert result.returncode == 0
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"


async def test_uncaptured_streams_are_none(engine: str) -> None:
    result = await aioproc.run_process(
        ["true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, engine=engine
    )
    assert result.stdout is None
    assert result.stderr is None


async def test_check_raises_called_process_error_with_output(engine: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as caught:
        await aioproc.run_process("echo out; echo err >&2; exit 3", engine=engine)
    assert caught.value.returncode == 3
    assert caught.value.cmd == "echo out; echo err >&2; exit 3"
    assert caught.value.stdout == b"out\n"
    assert caught.value.stderr == b"err\n"


async def test_check_false_returns_the_status(engine: str) -> None:
    result = await aioproc.run_process(["sh", "-c", "kill -9 $$"], check=False, engine=engine)
    assert result.returncode == -signal.SIGKILL


async def test_input(engine: str) -> None:
    result = await aioproc.run_process(["cat"], input=b"fed in", engine=engine)
    assert result.stdout == b"fed in"


async def test_empty_input_gives_eof_not_our_stdin(engine: str) -> None:
    result = await aioproc.run_process(["cat"], input=b"", engine=engine)
    assert result.stdout == b""


async def test_input_the_child_does_not_read(engine: str) -> None:
    result = await aioproc.run_process(["true"], input=b"x" * (1 << 20), engine=engine)
    assert result.returncode == 0


async def test_input_and_stdin_together_is_an_error(engine: str) -> None:
    with pytest.raises(ValueError, match="only one of stdin and input"):
        await aioproc.run_process(["cat"], input=b"x", stdin=subprocess.DEVNULL, engine=engine)


async def test_input_must_be_bytes(engine: str) -> None:
    with pytest.raises(TypeError, match="input must be bytes, not str"):
        await aioproc.run_process(["cat"], input="text", engine=engine)  # type: ignore[arg-type]


async def test_big_input_and_big_output_together(engine: str) -> None:
    """16 MiB each way through one child: no pipe fills up and deadlocks."""
    data = os.urandom(16 << 20)
    code = (
        "import sys\n"
        "data = sys.stdin.buffer.read()\n"
        "sys.stdout.buffer.write(data)\n"
        "sys.stderr.buffer.write(data[::-1])\n"
    )
    result = await aioproc.run_process(py(code), input=data, engine=engine)
    assert result.stdout == data
    assert result.stderr == data[::-1]


async def test_timeout_stops_the_child_and_keeps_partial_output(engine: str) -> None:
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        await aioproc.run_process(
            ["sh", "-c", "echo partial; echo also >&2; sleep 60"], timeout=0.5, engine=engine
        )
    assert caught.value.timeout == 0.5
    assert caught.value.cmd == ["sh", "-c", "echo partial; echo also >&2; sleep 60"]
    assert caught.value.output == b"partial\n"
    assert caught.value.stderr == b"also\n"


async def test_timeout_uses_the_grace_period(engine: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    code = (
        "import signal, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: open({str(log)!r}, 'a').write('TERM'))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        await aioproc.run_process(py(code), timeout=1, grace=0.2, engine=engine)
    assert caught.value.output == b"ready\n"
    assert log.read_text() == "TERM"


async def test_cancellation_stops_and_reaps_the_child(engine: str) -> None:
    async with anyio.create_task_group() as tg:
        process = await tg.start(partial(aioproc.run_process, ["sleep", "60"], engine=engine))
        assert pid_alive(process.pid)
        tg.cancel_scope.cancel()
    assert process.returncode == -signal.SIGTERM
    assert process.pid not in children_of_us()


async def test_task_group_start_hands_over_the_process(engine: str) -> None:
    async with anyio.create_task_group() as tg:
        process = await tg.start(
            lambda task_status: aioproc.run_process(
                ["cat"], stdin=subprocess.PIPE, engine=engine, task_status=task_status
            )
        )
        assert isinstance(process, aioproc.Process)
        assert process.stdin is not None
        await process.stdin.send(b"through start()")
        await process.stdin.aclose()
    assert process.returncode == 0


async def test_a_thousand_runs_leave_nothing_behind(anyio_backend: object) -> None:
    fds = open_fds()
    for _ in range(1000):
        result = await aioproc.run_process(["true"])
        assert result.returncode == 0
    assert not children_of_us()
    # Under the thread watcher a waiter thread may still be closing its pipe end.
    with anyio.fail_after(5):
        while open_fds() != fds:
            await anyio.sleep(0.01)


async def test_many_at_once(engine: str) -> None:
    results: dict[int, int] = {}

    async def run(index: int) -> None:
        result = await aioproc.run_process(
            ["sh", "-c", f"exit {index % 7}"], check=False, engine=engine
        )
        results[index] = result.returncode

    async with anyio.create_task_group() as tg:
        for index in range(200):
            tg.start_soon(run, index)
    assert results == {index: index % 7 for index in range(200)}


async def test_killed_child_with_check_raises(engine: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as caught:
        await aioproc.run_process(["sh", "-c", "kill -SEGV $$"], engine=engine)
    assert caught.value.returncode == -signal.SIGSEGV
    assert "died with <Signals.SIGSEGV" in str(caught.value)
