"""``ChildScope``: unattended children, reaped as they exit, stopped when the scope is left early."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import anyio
import pytest

from aioproc import ChildScope, Process

from .helpers import children_of_us, py, thread_count
from .native_cancel import cancel_natively

# A child that reports each SIGTERM in a file and otherwise ignores it.
STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: open({0!r}, 'a').write('TERM'))\n"
    "open({0!r} + '.ready', 'w').close()\n"
    "time.sleep(60)\n"
)


async def _until_exited(processes: list[Process]) -> None:
    with anyio.fail_after(30):
        while any(process.returncode is None for process in processes):
            await anyio.sleep(0.01)


async def test_start_returns_at_once_and_leaving_waits(
    anyio_backend: object, engine: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    async with ChildScope() as scope:
        process = await scope.start(
            ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.01; done"], engine=engine
        )
        assert isinstance(process, Process)
        assert (process.stdin, process.stdout, process.stderr) == (None, None, None)  # DEVNULL
        assert process.returncode is None
        assert scope.running == {process}
        go.touch()  # the child exits once it sees this; leaving the block waits for that
    assert process.returncode == 0
    assert scope.running == frozenset()
    assert scope.failures == []


async def test_a_success_and_a_failure_are_reported(anyio_backend: object, engine: str) -> None:
    exited: list[tuple[object, int | None]] = []

    def on_exit(process: Process) -> None:
        exited.append((process.args, process.returncode))

    with pytest.raises(ExceptionGroup) as caught:
        async with ChildScope(on_exit=on_exit) as scope:
            await scope.start(["true"], engine=engine)
            await scope.start(["sh", "-c", "exit 3"], engine=engine)
    assert str(caught.value) == "1 child process failed (1 sub-exception)"
    [error] = caught.value.exceptions
    assert isinstance(error, subprocess.CalledProcessError)
    assert (error.returncode, error.cmd) == (3, ["sh", "-c", "exit 3"])
    assert sorted(exited, key=str) == [(["sh", "-c", "exit 3"], 3), (["true"], 0)]


async def test_check_false_keeps_no_failures(anyio_backend: object) -> None:
    async with ChildScope(check=False) as scope:
        process = await scope.start(["false"])
    assert process.returncode == 1
    assert scope.failures == []


async def test_children_are_reaped_as_they_exit(anyio_backend: object) -> None:
    async with ChildScope(check=False) as scope:
        quick = [await scope.start(["true"]) for _ in range(5)]
        leader = await scope.start(["true"], process_group=0)  # kept a zombie by open_process
        slow = await scope.start(["sleep", "60"])
        await _until_exited([*quick, leader])
        with anyio.fail_after(10):
            while len(children_of_us()) > 1:
                await anyio.sleep(0.01)
        assert children_of_us() == {slow.pid: "S"}  # no zombie while the scope is open
        slow.terminate()


async def test_two_hundred_children(anyio_backend: object) -> None:
    threads = thread_count()
    async with ChildScope() as scope:
        processes = [await scope.start(["true"]) for _ in range(200)]
        await _until_exited(processes)
        with anyio.fail_after(10):
            while children_of_us():
                await anyio.sleep(0.01)
    assert [process.returncode for process in processes] == [0] * 200
    with anyio.fail_after(10):  # the thread watcher's waiters end with their children
        while thread_count() > threads:
            await anyio.sleep(0.01)
    # The leak check after each test makes sure no fd is left open.


async def test_leaving_with_a_timeout_stops_the_stragglers(
    anyio_backend: object, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    with pytest.raises(ExceptionGroup) as caught:
        async with ChildScope(timeout=0.1) as scope:
            done = await scope.start(["true"])
            polite = await scope.start(["sleep", "60"])
            stubborn = await scope.start(py(STUBBORN.format(str(log))), grace=0.1)
            with anyio.fail_after(30):
                while not (tmp_path / "log.ready").exists():
                    await anyio.sleep(0.01)
    assert done.returncode == 0
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    assert log.read_text() == "TERM"
    codes = sorted(error.returncode for error in caught.value.exceptions)  # type: ignore[attr-defined]
    assert codes == sorted([-signal.SIGTERM, -signal.SIGKILL])


async def test_a_timeout_lets_children_that_finish_in_time_finish(anyio_backend: object) -> None:
    async with ChildScope(timeout=60) as scope:
        process = await scope.start(["sleep", "0.1"])
    assert process.returncode == 0


async def test_cancellation_stops_every_child(anyio_backend: object, engine: str) -> None:
    with anyio.CancelScope() as cancel_scope:
        async with ChildScope() as scope:
            processes = [await scope.start(["sleep", "60"], engine=engine) for _ in range(3)]
            cancel_scope.cancel()
            await anyio.sleep(60)
    assert cancel_scope.cancelled_caught
    assert [process.returncode for process in processes] == [-signal.SIGTERM] * 3
    assert len(scope.failures) == 3  # kept, but not raised over the cancellation


async def test_an_error_stops_every_child_and_goes_on_unchanged(anyio_backend: object) -> None:
    with pytest.raises(KeyError, match="boom"):
        async with ChildScope() as scope:
            process = await scope.start(["sleep", "60"], process_group=0)
            raise KeyError("boom")
    assert process.returncode == -signal.SIGTERM


async def test_an_error_in_on_exit_stops_the_others(anyio_backend: object) -> None:
    def on_exit(process: Process) -> None:
        if process.args == ["true"]:
            raise RuntimeError("on_exit failed")

    with pytest.raises(ExceptionGroup) as caught:
        async with ChildScope(on_exit=on_exit) as scope:
            sleeper = await scope.start(["sleep", "60"])
            await scope.start(["true"])
            await anyio.sleep(60)
    assert caught.group_contains(RuntimeError, match="on_exit failed")
    assert sleeper.returncode == -signal.SIGTERM


async def test_children_can_be_started_from_other_tasks(anyio_backend: object) -> None:
    async with ChildScope(check=False) as scope, anyio.create_task_group() as tg:
        for index in range(5):
            tg.start_soon(scope.start, ["sh", "-c", f"exit {index}"])
    assert scope.failures == []
    assert len(children_of_us()) == 0


async def test_pipe_is_refused_and_files_are_taken(anyio_backend: object, tmp_path: Path) -> None:
    async with ChildScope() as scope:
        with pytest.raises(ValueError, match="stdout=PIPE is not valid in a ChildScope"):
            await scope.start(["true"], stdout=subprocess.PIPE)
        with open(tmp_path / "out", "wb") as out:
            await scope.start(["echo", "to a file"], stdout=out)
    assert (tmp_path / "out").read_bytes() == b"to a file\n"


async def test_start_needs_an_open_scope(anyio_backend: object) -> None:
    scope = ChildScope()
    with pytest.raises(RuntimeError, match="needs the scope open"):
        await scope.start(["true"])
    async with scope:
        pass
    with pytest.raises(RuntimeError, match="needs the scope open"):
        await scope.start(["true"])
    with pytest.raises(RuntimeError, match="entered only once"):
        async with scope:
            pass


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"timeout": -1}, ValueError),
        ({"timeout": "1"}, ValueError),
        ({"timeout": float("nan")}, ValueError),
        ({"on_exit": 42}, TypeError),
    ],
    ids=["negative timeout", "str timeout", "nan timeout", "on_exit not callable"],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        ChildScope(**kwargs)  # type: ignore[arg-type]
    assert repr(next(iter(kwargs.values()))) in str(caught.value)  # names what was passed


async def test_a_bad_command_raises_from_start(anyio_backend: object) -> None:
    async with ChildScope() as scope:
        with pytest.raises(FileNotFoundError, match="no-such-program-xyz"):
            await scope.start(["no-such-program-xyz"])
        assert scope.running == frozenset()


async def test_an_error_goes_on_unchanged_when_on_exit_raises(anyio_backend: object) -> None:
    """on_exit fails for the children the scope stops: the block's error still goes on, with
    each of on_exit's errors in a note."""

    def on_exit(process: Process) -> None:
        raise RuntimeError(f"on_exit failed for {process.args[1]}")

    with pytest.raises(ValueError, match="boom") as caught:
        async with ChildScope(on_exit=on_exit) as scope:
            first = await scope.start(["sleep", "60"])
            second = await scope.start(["sleep", "61"])
            raise ValueError("boom")
    assert first.returncode == second.returncode == -signal.SIGTERM
    notes = caught.value.__notes__
    assert len(notes) == 2
    assert sorted(note.splitlines()[-1] for note in notes) == [
        "RuntimeError: on_exit failed for 60",
        "RuntimeError: on_exit failed for 61",
    ]
    assert all("Traceback" in note and "in on_exit" in note for note in notes)


async def test_native_cancellation_twice_still_stops_and_reaps_every_child(
    anyio_backend: object, tmp_path: Path
) -> None:
    """Task.cancel() in the block, and again while a child ignores SIGTERM: it is killed."""
    log = tmp_path / "log"
    processes: list[Process] = []

    async def block() -> None:
        async with ChildScope() as scope:
            processes.append(await scope.start(["sleep", "60"]))
            processes.append(await scope.start(py(STUBBORN.format(str(log))), grace=1))
            await anyio.sleep(60)

    async def started() -> None:
        with anyio.fail_after(30):
            while not (tmp_path / "log.ready").exists():
                await anyio.sleep(0.01)

    async def in_the_grace_period() -> None:
        with anyio.fail_after(30):
            while not log.exists():
                await anyio.sleep(0.01)

    outcome = await cancel_natively(block, [started, in_the_grace_period])
    assert outcome.cancelled
    assert outcome.error is None
    assert [process.returncode for process in processes] == [-signal.SIGTERM, -signal.SIGKILL]
    assert log.read_text() == "TERM"
    assert not children_of_us()
