"""run_process and the watcher as trio users expect them (issue 10 items 1-4, issue 16 items 5, 10).

* ``TaskGroup.start()`` hands the caller the streams it asked for by keyword;
* ``stdin=PIPE`` without ``start()`` or ``input`` is refused before a spawn;
* with SIGCHLD ignored, the lost exit status is 0, and nothing raises twice;
* a failing ``deliver_cancel`` cannot keep the child alive, whatever the warnings filter;
* ``timeout`` is checked, and a spent one raises ``TimeoutExpired``, never something else.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import warnings
from collections.abc import Iterator
from functools import partial

import anyio
import anyio.abc
import pytest

import aioproc
from aioproc import Process

from .helpers import children_of_us, pid_alive, py

PIPE = subprocess.PIPE


@pytest.fixture
def sigchld_ignored() -> Iterator[None]:
    """SIGCHLD set to SIG_IGN for the test, as daemons do; restored at teardown."""
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)


def refused_by_asyncio(anyio_backend: object, engine: str) -> bool:
    """Whether ``engine="asyncio"`` refuses to spawn with SIGCHLD ignored: on plain
    asyncio whose own child watcher is the pidfd one (3.12 on), which fails on a
    child the kernel reaped before it was watched."""
    from asyncio import unix_events

    can_use_pidfd = getattr(unix_events, "can_use_pidfd", lambda: False)
    return engine == "asyncio" and anyio_backend == "asyncio" and bool(can_use_pidfd())


@pytest.fixture
def errors_from_warnings() -> Iterator[None]:
    """Every warning raised as an exception, as users' ``-W error`` suites do."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# -- 3. SIGCHLD ignored ------------------------------------------------------------


@pytest.mark.usefixtures("sigchld_ignored", "errors_from_warnings")
@pytest.mark.parametrize("group", [False, True], ids=["alone", "group-leader"])
async def test_with_sigchld_ignored_the_lost_status_is_zero(
    anyio_backend: object, engine: str, group: bool
) -> None:
    if refused_by_asyncio(anyio_backend, engine):
        return  # test_asyncio_engine_refuses_to_race_the_kernel
    # libuv installs a SIGCHLD handler of its own when it spawns, so under uvloop
    # the asyncio engine still learns the true status.
    libuv_reaps = engine == "asyncio" and isinstance(anyio_backend, tuple)
    expected = 3 if libuv_reaps else 0
    process = await aioproc.open_process(
        ["sh", "-c", "sleep 0.2; exit 3"],
        stdin=None,
        stdout=None,
        stderr=None,
        process_group=0 if group else None,
        engine=engine,  # type: ignore[arg-type]
    )
    try:
        assert await process.wait() == expected
        assert process.returncode == expected
        assert await process.wait() == expected
    finally:
        await process.aclose()
    assert process.returncode == expected
    assert process.pid not in children_of_us()


@pytest.mark.usefixtures("sigchld_ignored", "errors_from_warnings")
async def test_with_sigchld_ignored_quick_children_are_watched_too(
    anyio_backend: object, engine: str
) -> None:
    if refused_by_asyncio(anyio_backend, engine):
        return  # test_asyncio_engine_refuses_to_race_the_kernel
    # Most are reaped by the kernel before their watch is even set up.
    for _ in range(50):
        result = await aioproc.run_process(["sh", "-c", "echo hi"], engine=engine)  # type: ignore[arg-type]
        assert result.returncode == 0
        assert result.stdout == b"hi\n"


@pytest.mark.usefixtures("sigchld_ignored", "errors_from_warnings")
async def test_asyncio_engine_refuses_to_race_the_kernel(anyio_backend: object) -> None:
    if not refused_by_asyncio(anyio_backend, "asyncio"):
        return  # uvloop, or asyncio's thread watcher: covered by the tests above
    with pytest.raises(RuntimeError, match="cannot start a child while SIGCHLD is ignored"):
        await aioproc.run_process(["true"], engine="asyncio")
    assert not children_of_us()


@pytest.mark.usefixtures("sigchld_ignored", "errors_from_warnings")
async def test_with_sigchld_ignored_a_running_child_still_polls_as_running(
    anyio_backend: object,
) -> None:
    async with aioproc.open_process(["sleep", "30"], stdin=None) as process:
        assert process.returncode is None
        process.kill()
        assert await process.wait() == 0  # the kernel took the status with it
    assert process.returncode == 0


async def test_a_stolen_child_warns_once_after_its_status_is_stored(
    anyio_backend: object,
) -> None:
    process = await aioproc.open_process(["true"], stdin=None, stdout=None, stderr=None)
    try:
        os.waitpid(process.pid, 0)  # somebody else's waitpid(-1), in effect
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(RuntimeWarning, match="reaped by someone else"):
                await process.wait()
            # The status was stored before the warning: nothing raises again.
            assert process.returncode == 0
            assert await process.wait() == 0
    finally:
        await process.aclose()
    assert process.returncode == 0


async def test_a_stolen_child_reports_zero_with_one_warning(anyio_backend: object) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with aioproc.open_process(["true"], stdin=None) as process:
            os.waitpid(process.pid, 0)
            assert await process.wait() == 0
            assert process.returncode == 0
    lost = [w for w in caught if "reaped by someone else" in str(w.message)]
    assert len(lost) == 1, [str(w.message) for w in caught]


# -- 1. TaskGroup.start(): the streams asked for by name are the caller's ----------


async def test_under_start_the_streams_asked_for_are_the_callers(engine: str) -> None:
    results: list[subprocess.CompletedProcess[bytes]] = []

    async def run(*, task_status: anyio.abc.TaskStatus[Process]) -> None:
        results.append(
            await aioproc.run_process(
                ["sh", "-c", "tr a-z A-Z; echo done >&2"],
                stdin=PIPE,
                stdout=PIPE,
                check=False,
                engine=engine,  # type: ignore[arg-type]
                task_status=task_status,
            )
        )

    async with anyio.create_task_group() as tg:
        process = await tg.start(run)
        assert process.stdin is not None
        assert process.stdout is not None
        await process.stdin.send(b"hello\n")
        await process.stdin.aclose()
    # The child has exited and run_process returned: the caller's pipe is still
    # open, with nothing read from it behind the caller's back.
    with anyio.fail_after(10):
        assert await process.stdout.read_all() == b"HELLO\n"
    assert not process.stdout.closed
    await process.aclose()
    assert process.stdout.closed
    (result,) = results
    assert result.returncode == 0
    assert result.stdout is None  # the caller's
    assert result.stderr == b"done\n"  # not asked for by name: captured


async def test_under_start_closing_the_callers_streams_frees_everything(engine: str) -> None:
    # No aclose(): closing the last pipe the caller holds lets the rest go (with
    # engine="asyncio", the transport). The leak check of every test sees the rest.
    async with anyio.create_task_group() as tg:
        process = await tg.start(
            partial(
                aioproc.run_process,
                ["sh", "-c", "echo out; echo err >&2"],
                stdout=PIPE,
                stderr=PIPE,
                engine=engine,  # type: ignore[arg-type]
            )
        )
    assert process.stdout is not None
    assert process.stderr is not None
    with anyio.fail_after(10):
        async with process.stdout, process.stderr:
            assert await process.stdout.read_all() == b"out\n"
            assert await process.stderr.read_all() == b"err\n"
    assert process.returncode == 0
    if engine == "asyncio":
        assert process._transport.is_closing()  # type: ignore[attr-defined]


async def test_under_start_the_caller_reads_as_the_child_writes(engine: str) -> None:
    async with anyio.create_task_group() as tg:
        process = await tg.start(
            partial(
                aioproc.run_process,
                ["cat"],
                stdin=PIPE,
                stdout=PIPE,
                engine=engine,  # type: ignore[arg-type]
            )
        )
        assert process.stdin is not None
        assert process.stdout is not None
        with anyio.fail_after(10):
            await process.stdin.send(b"hello\n")
            assert await process.stdout.receive() == b"hello\n"
            await process.stdin.aclose()
            assert await process.stdout.read_all() == b""
    await process.aclose()
    assert process.returncode == 0


async def test_under_start_stderr_asked_for_is_the_callers_and_input_still_fed(
    engine: str,
) -> None:
    results: list[subprocess.CompletedProcess[bytes]] = []

    async def run(*, task_status: anyio.abc.TaskStatus[Process]) -> None:
        results.append(
            await aioproc.run_process(
                ["sh", "-c", "cat; echo oops >&2"],
                input=b"fed",
                stderr=PIPE,
                engine=engine,  # type: ignore[arg-type]
                task_status=task_status,
            )
        )

    async with anyio.create_task_group() as tg:
        process = await tg.start(run)
        assert process.stderr is not None
        with anyio.fail_after(10):
            assert await process.stderr.read_all() == b"oops\n"
    await process.aclose()
    (result,) = results
    assert result.stdout == b"fed"
    assert result.stderr is None


async def test_under_start_the_callers_streams_close_when_it_is_cancelled(engine: str) -> None:
    async with anyio.create_task_group() as tg:
        process = await tg.start(
            partial(aioproc.run_process, ["sleep", "60"], stdout=PIPE, engine=engine)  # type: ignore[arg-type]
        )
        assert pid_alive(process.pid)
        tg.cancel_scope.cancel()
    assert process.returncode == -signal.SIGTERM
    assert process.stdout is not None
    assert process.stdout.closed
    assert process.pid not in children_of_us()


async def test_without_start_stdout_pipe_by_name_is_captured_as_before(engine: str) -> None:
    result = await aioproc.run_process(["echo", "hi"], stdout=PIPE, stderr=PIPE, engine=engine)  # type: ignore[arg-type]
    assert result.stdout == b"hi\n"
    assert result.stderr == b""


# -- 2. stdin=PIPE awaited directly -------------------------------------------------


@pytest.mark.parametrize("stdin", [PIPE, -1], ids=["PIPE", "minus-one"])
async def test_stdin_pipe_without_start_is_refused_before_a_spawn(engine: str, stdin: int) -> None:
    with anyio.fail_after(10), pytest.raises(ValueError, match=r"stdin=PIPE is only valid with"):
        await aioproc.run_process(["cat"], stdin=stdin, engine=engine)  # type: ignore[arg-type]
    assert not children_of_us()


# -- 5. and 6. timeout ---------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0, 0.0, -1, -math.inf], ids=str)
async def test_a_timeout_already_over_raises_timeout_expired(engine: str, seconds: float) -> None:
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        await aioproc.run_process(["sleep", "60"], timeout=seconds, engine=engine)  # type: ignore[arg-type]
    assert caught.value.timeout == seconds
    assert caught.value.cmd == ["sleep", "60"]
    assert not children_of_us()


async def test_a_deadline_passing_during_the_spawn_raises_timeout_expired(engine: str) -> None:
    for timeout in (1e-9, 1e-6, 1e-4, 1e-3, 3e-3, 1e-2) * 3:
        with pytest.raises(subprocess.TimeoutExpired) as caught:
            await aioproc.run_process(["sleep", "60"], timeout=timeout, grace=0, engine=engine)  # type: ignore[arg-type]
        assert caught.value.timeout == timeout
        assert not children_of_us()


async def test_an_infinite_timeout_waits_as_none_does(engine: str) -> None:
    result = await aioproc.run_process(["echo", "hi"], timeout=math.inf, engine=engine)  # type: ignore[arg-type]
    assert result.stdout == b"hi\n"


@pytest.mark.parametrize(
    ("seconds", "error", "named"),
    [
        (math.nan, ValueError, "nan"),
        (True, TypeError, "bool: True"),
        ("5", TypeError, "str: '5'"),
        (b"5", TypeError, "bytes: b'5'"),
    ],
    ids=["nan", "bool", "str", "bytes"],
)
async def test_a_timeout_that_is_not_a_number_is_refused(
    engine: str, seconds: object, error: type[Exception], named: str
) -> None:
    with pytest.raises(error, match=f"timeout must be a number of seconds or None, not {named}"):
        await aioproc.run_process(["true"], timeout=seconds, engine=engine)  # type: ignore[arg-type]
    assert not children_of_us()


# -- 4. a deliver_cancel that raises -----------------------------------------------


class Boom(BaseException):
    """Not an Exception: it must not stop the cleanup either."""


@pytest.mark.usefixtures("errors_from_warnings")
async def test_a_failing_deliver_cancel_under_start_kills_then_raises(engine: str) -> None:
    async def bad(process: Process) -> None:
        raise ValueError("foo")

    with pytest.raises(ExceptionGroup) as caught:
        async with anyio.create_task_group() as tg:
            process = await tg.start(
                partial(
                    aioproc.run_process,
                    ["sleep", "30"],
                    stdout=None,
                    stderr=None,
                    deliver_cancel=bad,
                    engine=engine,  # type: ignore[arg-type]
                )
            )
            tg.cancel_scope.cancel()
    # anyio's task group wraps what its task raised; the error itself is not wrapped.
    assert [type(exc) for exc in caught.value.exceptions] == [ValueError]
    assert str(caught.value.exceptions[0]) == "foo"
    assert process.returncode == -signal.SIGKILL
    assert process.pid not in children_of_us()


@pytest.mark.usefixtures("errors_from_warnings")
@pytest.mark.parametrize("error", [ValueError("foo"), Boom("boom")], ids=["Exception", "Base"])
async def test_a_failing_deliver_cancel_raises_alone_after_the_kill(
    engine: str, error: BaseException
) -> None:
    async def bad(process: Process) -> None:
        raise error

    with pytest.raises(type(error)) as caught, anyio.move_on_after(0.2):
        async with aioproc.open_process(
            ["sleep", "30"],
            process_group=0,
            deliver_cancel=bad,
            engine=engine,  # type: ignore[arg-type]
        ) as process:
            await process.wait()
    assert caught.value is error
    assert isinstance(caught.value.__context__, anyio.get_cancelled_exc_class())
    assert process.returncode == -signal.SIGKILL
    assert process.stdout is not None
    assert process.stdout.closed
    assert process.pid not in children_of_us()


@pytest.mark.usefixtures("errors_from_warnings")
async def test_deliver_cancel_failing_after_the_child_exited_still_raises(engine: str) -> None:
    async def kill_then_fail(process: Process) -> None:
        process.kill()
        # Shielded, so that the cancellation of the hook at the child's exit
        # cannot come first: the error is raised once the child is gone.
        with anyio.CancelScope(shield=True):
            await process.wait()
        raise ValueError("after the exit")

    with pytest.raises(ValueError, match="after the exit"), anyio.move_on_after(0.2):
        await aioproc.run_process(["sleep", "30"], deliver_cancel=kill_then_fail, engine=engine)  # type: ignore[arg-type]
    assert not children_of_us()


@pytest.mark.usefixtures("errors_from_warnings")
async def test_a_failing_deliver_cancel_on_timeout_kills_and_raises(engine: str) -> None:
    async def bad(process: Process) -> None:
        process.terminate()
        await anyio.sleep(0)
        raise ValueError("half done")

    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(30)"
    with pytest.raises(ValueError, match="half done"):
        await aioproc.run_process(
            py(code),
            timeout=0.3,
            deliver_cancel=bad,
            engine=engine,  # type: ignore[arg-type]
        )
    assert not children_of_us()
