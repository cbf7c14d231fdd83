"""ForkPool (issue 13): warm forked workers, crashes, cancellation, recycling, shutdown.

Every async test runs on asyncio, uvloop and trio, under the child watcher CI
picks; the autouse fixture of ``conftest`` fails any test that leaves an fd, a
child or a zombie. The functions the workers run are defined at module level:
they go to the workers by reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import anyio
import pytest
import uvloop

import aioproc
from aioproc import ChildDied, ForkPool, PoolBroken

from .helpers import children_of_us, open_fds, pid_alive, wait_until

# anyio's pytest plugin runs trio in guest mode, where trio waits for I/O in a
# thread of its own: the pool's default thread policy warns about it. The
# tests of that policy record the warning themselves.
pytestmark = pytest.mark.filterwarnings(r"ignore:aioproc\.ForkPool.* other thread:RuntimeWarning")


# -- what the workers run ---------------------------------------------------------------


class Oops(Exception):
    pass


def add(a: int, b: int = 0) -> int:
    return a + b


def getpid() -> int:
    return os.getpid()


def raise_oops(text: str) -> None:
    raise Oops(text)


async def async_add(a: int, b: int) -> int:
    await anyio.sleep(0)
    return a + b


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def wait_for_file(path: str) -> str:
    """Block until ``path`` exists: a call that runs until the test lets it end."""
    while not os.path.exists(path):
        time.sleep(0.005)
    return path


def touch(path: str) -> None:
    Path(path).touch()


def announce_then_sleep(path: str, seconds: float, ignore_term: bool = False) -> None:
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(path + ".tmp").write_text(str(os.getpid()))
    os.rename(path + ".tmp", path)  # whole, or not there
    time.sleep(seconds)


def die(how: str) -> None:
    if how == "exit":
        os._exit(3)
    elif how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segfault":
        import faulthandler

        faulthandler.disable()
        ctypes.string_at(0)
    elif how == "sys.exit":
        sys.exit(4)


def failing_initializer() -> None:
    raise Oops("the initializer failed")


def exiting_initializer() -> None:
    os._exit(7)


def speak(text: str) -> None:
    print(f"out: {text}")
    print(f"err: {text}", file=sys.stderr)


def unpicklable_result() -> Any:
    return threading.Lock()


def worker_facts() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "stdin": os.readlink("/proc/self/fd/0"),
        "fds": {
            fd: os.readlink(f"/proc/self/fd/{fd}")
            for fd in map(int, os.listdir("/proc/self/fd"))
            if _exists(fd)
        },
    }


def _exists(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def running(pool: ForkPool) -> int:
    """How many calls run in workers now."""
    return sum(worker.call is not None for worker in pool._workers.values())


# -- results ----------------------------------------------------------------------------


async def test_run_returns_the_value(anyio_backend: object) -> None:
    async with ForkPool(2) as pool:
        assert await pool.run(add, 1, b=2) == 3
        assert await pool.run(async_add, 2, 3) == 5
        await wait_until(lambda: len(pool.pids) == 2)
        assert os.getpid() not in pool.pids


async def test_an_exception_keeps_its_type_and_the_workers_traceback(anyio_backend: object) -> None:
    async with ForkPool(1) as pool:
        with pytest.raises(Oops, match="bad") as info:
            await pool.run(raise_oops, "bad")
        assert "raise_oops" in str(info.value.__cause__)
        assert await pool.run(add, 1) == 1  # the worker lives on


async def test_a_10_mb_result_and_argument_cross(anyio_backend: object) -> None:
    data = os.urandom(10 << 20)
    async with ForkPool(2) as pool:
        assert await pool.run(sleep_then, 0, data) == data


async def test_pickling_errors_name_what_could_not_be_sent(anyio_backend: object) -> None:
    async with ForkPool(1) as pool:
        with pytest.raises(pickle.PicklingError, match=r"the function, a function .*lambda"):
            await pool.run(lambda: 1)
        with pytest.raises(pickle.PicklingError, match=r"argument 2, a _thread\.lock"):
            await pool.run(sleep_then, 0, threading.Lock())
        with pytest.raises(pickle.PicklingError, match=r"keyword argument 'b', a _thread\.lock"):
            await pool.run(add, 1, b=threading.Lock())
        with pytest.raises(pickle.PicklingError, match=r"unpicklable_result\(\) returned a"):
            await pool.run(unpicklable_result)
        # A function made after the pool started does not exist in the workers.
        late = _define_late_function()
        with pytest.raises(pickle.UnpicklingError, match="defined before the pool started"):
            await pool.run(late)
        assert await pool.run(add, 2) == 2


def _define_late_function() -> Any:
    def late_function() -> int:
        return 1

    name = f"late_function_{len(_late)}"
    late_function.__qualname__ = late_function.__name__ = name
    _late.append(name)
    globals()[name] = late_function
    return late_function


_late: list[str] = []


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="workers must be a positive int, not 0"):
        ForkPool(0)
    with pytest.raises(ValueError, match="workers must be a positive int, not '2'"):
        ForkPool("2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tasks_per_child must be None or a positive int"):
        ForkPool(1, max_tasks_per_child=0)
    with pytest.raises(ValueError, match="grace"):
        ForkPool(1, grace=-1)
    with pytest.raises(ValueError, match="on_threads must be one of"):
        ForkPool(1, on_threads="never")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initializer must be callable, not int"):
        ForkPool(1, initializer=3)  # type: ignore[arg-type]


async def test_run_outside_the_block_and_bad_calls(anyio_backend: object) -> None:
    pool = ForkPool(1)
    with pytest.raises(RuntimeError, match="inside 'async with'"):
        await pool.run(add, 1)
    async with pool:
        with pytest.raises(TypeError, match="fn must be callable, not int"):
            await pool.run(3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="argument 2 must be iterable, not int"):
            pool.map(add, 3)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run(add, 1)


# -- the template and the workers -------------------------------------------------------


async def test_workers_have_their_own_group_dev_null_stdin_and_none_of_our_pipes(
    anyio_backend: object,
) -> None:
    async with ForkPool(2) as pool:
        facts = [await pool.run(worker_facts) for _ in range(4)]
        assert {f["pid"] for f in facts} <= set(pool.pids)
        for f in facts:
            assert f["pgid"] != os.getpgid(0)
            assert f["stdin"] == "/dev/null"
        # No worker holds another worker's pipes (so closing one always gives it
        # EOF), nor our end of the control socket.
        assert pool._sock is not None
        control = os.readlink(f"/proc/self/fd/{pool._sock.fileno()}")
        pipes = {
            pid: {
                os.readlink(f"/proc/self/fd/{w.requests._fd}"),
                os.readlink(f"/proc/self/fd/{w.results._fd}"),
            }
            for pid, w in pool._workers.items()
        }
        for f in facts:
            held = set(f["fds"].values())
            assert control not in held
            assert pipes[f["pid"]] <= held
            for pid, others in pipes.items():
                if pid != f["pid"]:
                    assert not others & held, f


def _pool_fds(pool: ForkPool) -> list[int]:
    fds = [pool._sock.fileno()] if pool._sock is not None else []
    for worker in pool._workers.values():
        fds += [worker.requests._fd, worker.results._fd]
    return [fd for fd in fds if fd >= 0]


async def test_a_fork_made_while_the_pool_runs_holds_none_of_its_fds(
    anyio_backend: object, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    async with ForkPool(2) as pool:
        await pool.run(add, 1)
        ours = {os.readlink(f"/proc/self/fd/{fd}") for fd in _pool_fds(pool)}
        fork = aioproc.fork(announce_then_sleep, str(started), 30, on_threads="allow")
        async with fork as child:
            await wait_until(started.exists)  # past the fork's own clean-up
            links = set()
            for name in os.listdir(f"/proc/{child.pid}/fd"):
                with contextlib.suppress(OSError):
                    links.add(os.readlink(f"/proc/{child.pid}/fd/{name}"))
            child.kill()
        assert not ours & links


async def test_workers_output_reaches_ours(anyio_backend: object, capfd: Any) -> None:
    async with ForkPool(1) as pool:
        await pool.run(speak, "hello")
        captured = capfd.readouterr()
    assert "out: hello" in captured.out
    assert "err: hello" in captured.err


# -- a worker that dies -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["exit", "kill", "segfault", "sys.exit"])
async def test_a_busy_worker_that_dies_raises_child_died_and_is_replaced(
    anyio_backend: object, how: str, tmp_path: Path
) -> None:
    async with ForkPool(2) as pool:
        await wait_until(lambda: len(pool.pids) == 2)
        first = set(pool.pids)
        gate = tmp_path / "go"
        outcome: dict[str, Any] = {}

        async def the_other_call() -> None:
            outcome["other"] = await pool.run(wait_for_file, str(gate))

        async with anyio.create_task_group() as tg:
            tg.start_soon(the_other_call)
            await wait_until(lambda: running(pool) == 1)
            with pytest.raises(ChildDied) as info:
                await pool.run(die, how)
            gate.touch()
        expected = {"exit": 3, "kill": -9, "segfault": -11, "sys.exit": 4}[how]
        assert info.value.returncode == expected
        assert info.value.pid in first
        assert outcome["other"] == str(gate)  # untouched
        await wait_until(lambda: len(pool.pids) == 2 and info.value.pid not in pool.pids)
        assert await pool.run(add, 5) == 5
        assert len(set(pool.pids) - first) == 1


async def test_a_worker_killed_while_idle_is_replaced(anyio_backend: object) -> None:
    async with ForkPool(1) as pool:
        pid = await pool.run(getpid)
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: pool.pids and pool.pids[0] != pid)
        assert await pool.run(getpid) != pid


@pytest.mark.parametrize("initializer", [failing_initializer, exiting_initializer])
async def test_workers_that_die_as_they_start_break_the_pool_once(
    anyio_backend: object, initializer: Any
) -> None:
    async with ForkPool(2, initializer=initializer) as pool:
        with pytest.raises(PoolBroken, match="die as they start") as info:
            await pool.run(add, 1)
        if initializer is failing_initializer:
            assert isinstance(info.value.__cause__, Oops)
        else:
            assert isinstance(info.value.__cause__, ChildDied)
            assert info.value.__cause__.returncode == 7
        with pytest.raises(PoolBroken):  # at once, every time: no loop of restarts
            await pool.run(add, 1)
        await wait_until(lambda: not pool.pids)


async def test_workers_killed_before_they_announce_themselves_break_the_pool_once(
    anyio_backend: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker hands us its pipes itself, first thing; killed before that, the template's
    report of its exit is all we hear of it: a start that failed, as above."""

    def killed(*args: object) -> NoReturn:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("not reached")

    # Only a new worker sends fds (the template and we only receive them).
    monkeypatch.setattr(socket, "send_fds", killed)
    async with ForkPool(2) as pool:
        with anyio.fail_after(10), pytest.raises(PoolBroken, match="die as they start") as info:
            await pool.run(add, 1)
        assert isinstance(info.value.__cause__, ChildDied)
        assert info.value.__cause__.returncode == -signal.SIGKILL
        await wait_until(lambda: not pool.pids)


async def test_an_initializer_runs_in_each_worker(anyio_backend: object, tmp_path: Path) -> None:
    async with ForkPool(2, initializer=touch, initargs=(str(tmp_path / "ready"),)) as pool:
        assert await pool.run(os.path.exists, str(tmp_path / "ready"))


async def test_a_killed_template_breaks_the_pool(anyio_backend: object) -> None:
    async with ForkPool(1) as pool:
        await pool.run(add, 1)
        assert pool._template is not None
        os.kill(pool._template.pid, signal.SIGKILL)
        await wait_until(lambda: pool._broken is not None)
        with pytest.raises(PoolBroken, match="template process exited"):
            await pool.run(add, 1)


# -- cancellation -------------------------------------------------------------------------


async def test_a_cancelled_queued_call_is_removed(anyio_backend: object, tmp_path: Path) -> None:
    gate, marker = tmp_path / "go", tmp_path / "ran"
    async with ForkPool(1) as pool, anyio.create_task_group() as tg:
        tg.start_soon(pool.run, wait_for_file, str(gate))
        await wait_until(lambda: running(pool) == 1)
        with anyio.CancelScope() as scope:
            tg.start_soon(_cancel_when_queued, pool, scope)
            await pool.run(touch, str(marker))
        assert scope.cancelled_caught
        assert not pool._queue
        gate.touch()
        assert await pool.run(add, 1) == 1
    assert not marker.exists()


async def _cancel_when_queued(pool: ForkPool, scope: anyio.CancelScope) -> None:
    await wait_until(lambda: pool._queue)
    scope.cancel()


@pytest.mark.parametrize("ignore_term", [False, True])
async def test_a_cancelled_running_call_stops_its_worker_and_is_replaced(
    anyio_backend: object, tmp_path: Path, ignore_term: bool
) -> None:
    started = tmp_path / "started"
    async with ForkPool(1, grace=3) as pool:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_when_exists, started, scope)
                await pool.run(announce_then_sleep, str(started), 60, ignore_term)
        assert scope.cancelled_caught
        pid = int(started.read_text())
        if ignore_term:
            # The cancellation came back at once; the worker is still in its grace.
            assert pid_alive(pid)
        await wait_until(lambda: pool.pids and pid not in pool.pids)
        assert await pool.run(getpid) != pid


async def _cancel_when_exists(path: Path, scope: anyio.CancelScope) -> None:
    await wait_until(path.exists)
    scope.cancel()


def _native_backends() -> list[Any]:
    return [asyncio.new_event_loop, uvloop.new_event_loop]


@pytest.mark.parametrize("loop_factory", _native_backends(), ids=["asyncio", "uvloop"])
def test_native_task_cancel_twice_of_a_running_call_and_of_the_shutdown(
    loop_factory: Any, tmp_path: Path
) -> None:
    started = tmp_path / "started"

    async def main() -> None:
        async def use(pool: ForkPool) -> None:
            await pool.run(announce_then_sleep, str(started), 60, True)

        async with ForkPool(2, grace=60) as pool:
            task = asyncio.ensure_future(use(pool))
            await wait_until(started.exists)
            task.cancel()
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            pid = int(started.read_text())
            assert pid_alive(pid)  # in its grace (60 s): the task did not wait for it
            assert await pool.run(add, 1) == 1
            started.unlink()
            os.kill(pid, signal.SIGKILL)  # or leaving the block would wait out its grace

        inner: list[asyncio.Future[None]] = []

        # And leaving the block, cancelled twice while it stops a worker that
        # ignores SIGTERM: everything is killed and reaped all the same.
        async def leave_by_error() -> None:
            async with ForkPool(1, grace=60) as pool:
                inner.append(asyncio.ensure_future(use(pool)))
                await wait_until(started.exists)
                raise Oops("leave")

        outer = asyncio.ensure_future(leave_by_error())
        await wait_until(started.exists)
        await asyncio.sleep(0.05)
        outer.cancel()
        await asyncio.sleep(0.05)
        outer.cancel()
        with pytest.raises((asyncio.CancelledError, Oops)):
            await outer
        await wait_until(lambda: not pid_alive(int(started.read_text())))
        (failure,) = await asyncio.gather(*inner, return_exceptions=True)
        assert isinstance(failure, ChildDied)

    fds, children = open_fds(), children_of_us()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    assert open_fds() == fds
    assert children_of_us() == children


async def test_1000_crash_and_cancel_cycles_leave_nothing(anyio_backend: object) -> None:
    fds = open_fds()
    async with ForkPool(2, grace=5) as pool:
        for cycle in range(500):
            with pytest.raises(ChildDied):
                await pool.run(die, "exit")
            with anyio.move_on_after(0.0005 * (cycle % 7)):
                await pool.run(sleep_then, 30)
        assert await pool.run(add, 1) == 1
        await wait_until(lambda: len(children_of_us()) == 1)  # the template
    assert open_fds() == fds


# -- recycling, threads ---------------------------------------------------------------------


async def test_max_tasks_per_child_recycles_workers(anyio_backend: object) -> None:
    async with ForkPool(2, max_tasks_per_child=3) as pool:
        pids = [await pool.run(getpid) for _ in range(12)]
        counts: dict[int, int] = {}
        for pid in pids:
            counts[pid] = counts.get(pid, 0) + 1
        assert max(counts.values()) <= 3
        assert len(counts) >= 4
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(pool.run, add, 1)


async def test_a_parent_with_10_threads_running(anyio_backend: object) -> None:
    stop = threading.Event()
    log = logging.getLogger("aioproc-test-threads")

    def busy() -> None:
        while not stop.wait(0.0005):  # runs, yet leaves the event loop the GIL
            log.debug("x" * 100)  # takes the logging lock over and over
            bytearray(1 << 16)  # and the allocator's

    async with ForkPool(2) as pool:
        threads = [threading.Thread(target=busy) for _ in range(10)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(10):
                assert await pool.run(add, 1, 1) == 2
                with pytest.raises(ChildDied):
                    await pool.run(die, "kill")  # a replacement forks each time
        finally:
            stop.set()
            for thread in threads:
                thread.join()


async def test_threads_at_start_warn_or_refuse(anyio_backend: object) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with pytest.raises(RuntimeError, match=r"aioproc\.ForkPool: \d+ other thread"):
            async with ForkPool(1, on_threads="refuse"):
                pass
        with pytest.warns(RuntimeWarning, match=r"aioproc\.ForkPool: \d+ other thread"):
            async with ForkPool(1) as pool:
                assert await pool.run(add, 1) == 1
        async with ForkPool(1, on_threads="allow") as pool:
            assert await pool.run(add, 2) == 2
    finally:
        stop.set()
        thread.join()


# -- leaving the block ----------------------------------------------------------------------


async def test_leaving_the_block_waits_for_running_calls(
    anyio_backend: object, tmp_path: Path
) -> None:
    results: list[Any] = []
    submitted: list[float] = []

    async def call(pool: ForkPool, seconds: float) -> None:
        submitted.append(seconds)
        results.append(await pool.run(sleep_then, seconds, seconds))

    async with anyio.create_task_group() as tg:
        async with ForkPool(2) as pool:
            for seconds in (0.2, 0.3, 0.01):
                tg.start_soon(call, pool, seconds)
            # Two run, one waits; on a loaded machine the first may be done already.
            await wait_until(lambda: len(submitted) == 3 and len(pool._queue) <= 1)
            await anyio.sleep(0.05)
        assert sorted(results) == [0.01, 0.2, 0.3]
        assert pool.pids == ()


async def test_leaving_by_an_error_stops_the_workers(anyio_backend: object, tmp_path: Path) -> None:
    started = tmp_path / "started"
    failures: list[BaseException] = []

    async def call(pool: ForkPool) -> None:
        try:
            await pool.run(announce_then_sleep, str(started), 60)
        except BaseException as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        with pytest.raises(Oops):
            async with ForkPool(1) as pool:
                tg.start_soon(call, pool)
                await wait_until(started.exists)
                raise Oops("leave")
        await wait_until(lambda: failures)
    assert isinstance(failures[0], ChildDied)
    assert failures[0].signal == signal.SIGTERM
    assert not pid_alive(int(started.read_text()))


async def test_cancelling_the_block_stops_everything(anyio_backend: object, tmp_path: Path) -> None:
    started = tmp_path / "started"
    with anyio.CancelScope() as scope:
        async with ForkPool(2, grace=0.5) as pool, anyio.create_task_group() as tg:
            tg.start_soon(pool.run, announce_then_sleep, str(started), 60, True)
            await wait_until(started.exists)
            for _ in range(4):  # one more running, three queued
                tg.start_soon(pool.run, sleep_then, 60)
            await wait_until(lambda: len(pool._queue) == 3)
            scope.cancel()
    assert not pid_alive(int(started.read_text()))


# -- map ------------------------------------------------------------------------------------


async def test_map_ordered_and_unordered(anyio_backend: object) -> None:
    async with ForkPool(2) as pool:
        delays = [0.05, 0.0, 0.03, 0.0, 0.01]
        ordered = [v async for v in pool.map(sleep_then, delays, range(5))]
        assert ordered == [0, 1, 2, 3, 4]
        unordered = [v async for v in pool.map(sleep_then, delays, range(5), ordered=False)]
        assert sorted(unordered) == [0, 1, 2, 3, 4]
        assert [v async for v in pool.map(add, range(100), range(100))] == list(range(0, 200, 2))

        async def numbers() -> Any:
            for i in range(3):
                yield i

        assert [v async for v in pool.map(add, numbers())] == [0, 1, 2]


async def test_map_raises_the_first_error_and_cancels_the_rest(
    anyio_backend: object, tmp_path: Path
) -> None:
    async with ForkPool(2) as pool:
        seen = []
        with pytest.raises(Oops, match="3"):
            async for value in pool.map(_fail_on_3, range(1000), window=4):
                seen.append(value)
        assert seen == [0, 1, 2]
        async with pool.map(sleep_then, [60, 60]) as results:
            with anyio.move_on_after(0.1):
                await results.__anext__()
        await wait_until(lambda: len(pool._idle) == 2)
        assert await pool.run(add, 1) == 1


def _fail_on_3(x: int) -> int:
    if x == 3:
        raise Oops("3")
    return x
