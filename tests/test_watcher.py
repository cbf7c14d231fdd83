"""The child watcher reaps exactly our children, without a thread each, from any loop."""

from __future__ import annotations

import errno
import gc
import os
import signal
import subprocess
import sys
import threading
import warnings

import anyio
import pytest

import aioproc
from aioproc import _watcher

from .helpers import children_of_us, helper_code, open_fds, thread_count


async def test_a_foreign_popen_child_keeps_its_exit_status(anyio_backend: object) -> None:
    foreign = subprocess.Popen(["sh", "-c", "sleep 0.3; exit 42"])
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(aioproc.run_process, ["true"])
        assert foreign.wait() == 42
    finally:
        foreign.wait()


async def test_no_sigchld_handler_is_installed(anyio_backend: object) -> None:
    await aioproc.run_process(["true"])
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


async def test_five_hundred_children_add_no_thread_with_pidfd(anyio_backend: object) -> None:
    threads_before = thread_count()
    peak = 0
    processes = []
    try:
        for _ in range(500):
            processes.append(await aioproc.open_process(["sleep", "0.5"]))
        peak = thread_count()
    finally:
        for process in processes:
            await process.aclose()
    assert all(process.returncode == 0 for process in processes)
    if aioproc.child_watcher() == "pidfd":
        assert peak == threads_before
    else:  # the thread fallback: one waiter per running child, all gone afterwards
        assert peak > threads_before
        with anyio.fail_after(10):
            while thread_count() > threads_before:
                await anyio.sleep(0.01)


def test_the_environment_chooses_the_watcher() -> None:
    code = "import aioproc; print(aioproc.child_watcher())"
    for name in ("pidfd", "thread"):
        env = {**os.environ, "AIOPROC_CHILD_WATCHER": name}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.stdout.strip() == name, out.stderr


def test_an_unknown_watcher_name_is_refused() -> None:
    code = "import aioproc; aioproc.child_watcher()"
    env = {**os.environ, "AIOPROC_CHILD_WATCHER": "sigchld"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert "AIOPROC_CHILD_WATCHER='sigchld' names no child watcher" in out.stderr


def test_a_refused_pidfd_falls_back(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Where seccomp refuses pidfd_open, the probe fails and another mechanism is used."""
    from aioproc._watcher import _pidfd

    def refuse(pid: int, flags: int = 0) -> int:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "pidfd_open", refuse)
    _pidfd.available.cache_clear()  # the probe runs once per process; run it again
    request.addfinalizer(_pidfd.available.cache_clear)
    assert not _pidfd.available()
    monkeypatch.delenv("AIOPROC_CHILD_WATCHER", raising=False)
    assert _watcher._choose_mechanism() == "thread"
    monkeypatch.setenv("AIOPROC_CHILD_WATCHER", "pidfd")
    with pytest.raises(RuntimeError, match="pidfd_open\\(\\) is not usable here"):
        _watcher._choose_mechanism()


async def test_forked_child_forgets_our_children(anyio_backend: object) -> None:
    async with aioproc.open_process(["sleep", "30"]) as process:
        exit_fd = process._child.exit_fd  # type: ignore[attr-defined]
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without returning into the loop
            try:
                children = _watcher.active_children()
                try:
                    os.fstat(exit_fd)
                    closed = False
                except OSError:
                    closed = True
                os.write(write_fd, f"{len(children)} {closed}".encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        try:
            report = os.read(read_fd, 100).decode()
        finally:
            os.close(read_fd)
            os.waitpid(pid, 0)
        assert _watcher.active_children() == [process._child]  # type: ignore[attr-defined]
        process.kill()
    assert report == "0 True"


def test_two_loops_in_two_threads_at_once() -> None:
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    async def spawn_many(name: str) -> None:
        codes: list[int] = []

        async def one(index: int) -> None:
            result = await aioproc.run_process(["sh", "-c", f"exit {index % 5}"], check=False)
            codes.append(result.returncode)

        async with anyio.create_task_group() as tg:
            for index in range(100):
                tg.start_soon(one, index)
        results[name] = sorted(codes)

    def run(backend: str) -> None:
        try:
            anyio.run(spawn_many, backend, backend=backend)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b,)) for b in ("asyncio", "trio")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    expected = sorted(index % 5 for index in range(100))
    assert results == {"asyncio": expected, "trio": expected}


async def test_a_dropped_process_is_reaped_later(anyio_backend: object) -> None:
    process = await aioproc.open_process(["sleep", "0.2"], stdin=subprocess.DEVNULL)
    pid = process.pid
    with pytest.warns(ResourceWarning, match="was dropped while running"):
        del process
        gc.collect()
    await anyio.sleep(0.5)
    assert children_of_us().get(pid) == "Z"  # exited, and nobody has waited yet
    await aioproc.run_process(["true"])  # the next spawn reaps orphans
    assert pid not in children_of_us()


async def test_setup_failure_kills_and_reaps_the_child(
    anyio_backend: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []

    def no_more_fds(pid: int) -> object:
        started.append(pid)
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(_watcher, "_open_notifier", no_more_fds)
    fds = open_fds()
    with pytest.raises(OSError, match="Too many open files"):
        await aioproc.open_process(["sleep", "30"])
    assert open_fds() == fds
    assert started
    assert started[0] not in children_of_us()


async def test_a_stolen_child_reports_0(anyio_backend: object) -> None:
    async with aioproc.open_process(["true"], stdin=subprocess.DEVNULL) as process:
        os.waitpid(process.pid, 0)  # somebody else's waitpid(-1), in effect
        with pytest.warns(RuntimeWarning, match="reaped by someone else"):
            assert await process.wait() == 0  # as subprocess and trio report it


async def test_signalling_goes_through_the_pidfd(
    anyio_backend: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[int, int]] = []
    real = signal.pidfd_send_signal

    def spy(fd: int, sig: int, *args: object) -> None:
        sent.append((fd, sig))
        real(fd, sig)

    monkeypatch.setattr(signal, "pidfd_send_signal", spy)
    async with aioproc.open_process(["sleep", "30"]) as process:
        process.terminate()
        await process.wait()
    expected = [signal.SIGTERM] if aioproc.child_watcher() == "pidfd" else []
    assert [sig for _, sig in sent] == expected


async def test_a_fork_while_a_waiter_thread_holds_its_lock_does_not_hang(
    anyio_backend: object,
) -> None:
    """The after-fork hook runs in every forked child (os.fork, or a Popen with a
    preexec_fn, as die_with_parent and detach use): it must not take a lock that a
    waiter thread of the thread watcher held at the fork, since that thread is gone."""
    body = (
        "child = await aioproc.open_process(['sleep', '60'], stdin=aioproc.DEVNULL)\n"
        "lock = child._child._notifier._lock\n"
        "lock.acquire()  # as the waiter thread does while it writes its eventfd\n"
        "import subprocess\n"
        "done = subprocess.run(['echo', 'forked'], preexec_fn=lambda: None, capture_output=True)\n"
        "lock.release()\n"
        "print(done.stdout.decode(), end='')\n"
        "child.kill()\n"
        "await child.aclose()\n"
    )
    env = {**os.environ, "AIOPROC_CHILD_WATCHER": "thread"}
    with anyio.fail_after(30):
        result = await aioproc.run_process(helper_code(anyio_backend, body), env=env)
    assert result.stdout == b"forked\n"


def _exit_with(code: int) -> None:
    os._exit(code)


async def test_neighbours_keep_their_exit_statuses(anyio_backend: object) -> None:
    """Children of Popen, of asyncio and of multiprocessing, started by other code in
    this process, keep their true statuses while aioproc runs hundreds of its own."""
    import multiprocessing

    # The fork start method (forkserver and spawn leave helper processes behind).
    # Python warns that this test process may have threads; the child only exits.
    mp_child = multiprocessing.get_context("fork").Process(target=_exit_with, args=(43,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        mp_child.start()
    popen_child = subprocess.Popen(["sh", "-c", "sleep 0.3; exit 42"])
    asyncio_status: list[int] = []

    async def asyncio_neighbour() -> None:
        import asyncio

        child = await asyncio.create_subprocess_exec("sh", "-c", "sleep 0.3; exit 44")
        asyncio_status.append(await child.wait())

    try:
        async with anyio.create_task_group() as tg:
            if anyio_backend != "trio":
                tg.start_soon(asyncio_neighbour)
            for _ in range(300):
                tg.start_soon(aioproc.run_process, ["true"])
        assert popen_child.wait() == 42
        mp_child.join()
        assert mp_child.exitcode == 43
        assert asyncio_status == ([] if anyio_backend == "trio" else [44])
    finally:
        popen_child.wait()
        mp_child.join()
        mp_child.close()
