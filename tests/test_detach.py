"""``detach``: each property of a detached process, its failures, and what it leaves here.

Every process a test detaches is registered with the ``strays`` fixture, which
kills it by pid at the end. Some tests detach from a helper Python process, so
that the detaching process can exit, be killed, or get a SIGHUP; the helper
runs the same event loop as the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import sniffio

import aioproc
from aioproc import Process

from .helpers import (
    Strays,
    children_of_us,
    helper_code,
    proc_stat,
    proc_status,
    py,
    thread_count,
)
from .native_cancel import cancel_natively

# The helper detaches `sleep 60`, prints its pid, then does what the test says.
DETACH_AND_REPORT = """
detached = await aioproc.detach(["sleep", "60"])
print(detached.pid, flush=True)
"""


async def _read_pid(process: Process) -> int:
    assert process.stdout is not None
    line = await anext(process.stdout.lines())
    return int(line)


async def _gone(strays: Strays, pid: int) -> None:
    """Wait until ``pid`` has exited (a zombie counts as exited: it is not our child)."""
    with anyio.fail_after(10):
        while strays.alive(pid):
            await anyio.sleep(0.01)


def _ancestors() -> set[int]:
    found, pid = set(), os.getpid()
    while pid > 1:
        pid = int(proc_stat(pid)[1])
        found.add(pid)
    return found


async def test_returns_the_pid_of_the_command_itself(anyio_backend: object, strays: Strays) -> None:
    detached = await aioproc.detach(["sleep", "60"])
    strays.add(detached.pid)
    assert isinstance(detached, aioproc.DetachedProcess)
    assert detached.args == ["sleep", "60"]
    with open(f"/proc/{detached.pid}/cmdline", "rb") as f:
        assert f.read() == b"sleep\x0060\x00"
    assert detached.pid not in children_of_us()
    assert repr(detached) == f"<DetachedProcess pid={detached.pid} args=['sleep', '60']>"


async def test_a_string_goes_through_the_shell(
    anyio_backend: object, strays: Strays, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    detached = await aioproc.detach(f"echo $$ $((6 * 7)) > {out}")
    strays.add(detached.pid)
    await _gone(strays, detached.pid)
    assert out.read_text() == f"{detached.pid} 42\n"


async def test_runs_in_a_new_session_without_a_terminal(
    anyio_backend: object, strays: Strays
) -> None:
    detached = await aioproc.detach(["sleep", "60"])
    strays.add(detached.pid)
    assert os.getsid(detached.pid) == detached.pid
    assert os.getpgid(detached.pid) == detached.pid
    assert proc_stat(detached.pid)[4] == "0"  # tty_nr: no controlling terminal


async def test_its_parent_is_init_or_a_subreaper_never_us(
    anyio_backend: object, strays: Strays
) -> None:
    detached = await aioproc.detach(["sleep", "60"])
    strays.add(detached.pid)
    parent = int(proc_status(detached.pid)["PPid"])
    assert parent != os.getpid()
    # A subreaper is always an ancestor of ours: the test may run under one.
    assert parent == 1 or parent in _ancestors()


async def test_the_nearest_subreaper_adopts_it(anyio_backend: object, strays: Strays) -> None:
    # The helper makes itself a subreaper (PR_SET_CHILD_SUBREAPER = 36), then detaches.
    body = "import ctypes\nctypes.CDLL(None).prctl(36, 1, 0, 0, 0)\n" + DETACH_AND_REPORT
    body += "sys.stdin.read()\n"
    async with aioproc.open_process(helper_code(anyio_backend, body)) as helper:
        pid = strays.add(await _read_pid(helper))
        assert int(proc_status(pid)["PPid"]) == helper.pid
        assert helper.stdin is not None
        await helper.stdin.aclose()
        assert await helper.wait() == 0


async def test_survives_the_detaching_process_exiting(
    anyio_backend: object, strays: Strays
) -> None:
    async with aioproc.open_process(helper_code(anyio_backend, DETACH_AND_REPORT)) as helper:
        pid = strays.add(await _read_pid(helper))
        assert await helper.wait() == 0
    assert strays.alive(pid)
    assert int(proc_status(pid)["PPid"]) != helper.pid


async def test_survives_sigkill_of_the_detaching_process(
    anyio_backend: object, strays: Strays
) -> None:
    body = DETACH_AND_REPORT + "await anyio.sleep(60)\n"
    async with aioproc.open_process(helper_code(anyio_backend, body)) as helper:
        pid = strays.add(await _read_pid(helper))
        helper.kill()
        assert await helper.wait() == -signal.SIGKILL
    assert strays.alive(pid)


async def test_survives_sighup_to_the_detaching_process_group(
    anyio_backend: object, strays: Strays
) -> None:
    body = DETACH_AND_REPORT + "await anyio.sleep(60)\n"
    async with aioproc.open_process(helper_code(anyio_backend, body), process_group=0) as helper:
        pid = strays.add(await _read_pid(helper))
        helper.send_signal(signal.SIGHUP, group=True)
        assert await helper.wait() == -signal.SIGHUP
    assert strays.alive(pid)


async def test_survives_its_terminal_hanging_up(anyio_backend: object, strays: Strays) -> None:
    """nohup's case: the detaching process has a controlling terminal, which then goes away."""
    # The helper leads a session whose controlling terminal is a pty we hold.
    # Closing our end hangs the terminal up: the kernel sends SIGHUP to the helper.
    body = "import fcntl, termios\nfcntl.ioctl(0, termios.TIOCSCTTY, 0)\n" + DETACH_AND_REPORT
    body += "print(os.ttyname(0), flush=True)\nawait anyio.sleep(60)\n"
    controller, terminal = pty.openpty()
    try:
        helper = await aioproc.open_process(
            helper_code(anyio_backend, body),
            stdin=terminal,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        os.close(terminal)
    async with helper:
        try:
            pid = strays.add(await _read_pid(helper))
            assert helper.stdout is not None
            assert (await anext(helper.stdout.lines())).startswith(b"/dev/pts/")
            assert proc_stat(helper.pid)[4] != "0"  # the helper has the terminal ...
            assert proc_stat(pid)[4] == "0"  # ... and the detached command has none
        finally:
            os.close(controller)
        assert await helper.wait() == -signal.SIGHUP
    assert strays.alive(pid)


async def test_only_stdio_and_pass_fds_stay_open(anyio_backend: object, strays: Strays) -> None:
    read_fd, write_fd = os.pipe()
    os.set_inheritable(read_fd, True)  # inheritable, but not passed: closed anyway
    try:
        detached = await aioproc.detach(["sleep", "60"], pass_fds=[write_fd])
        strays.add(detached.pid)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert sorted(map(int, os.listdir(f"/proc/{detached.pid}/fd"))) == [0, 1, 2, write_fd]
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{detached.pid}/fd/{fd}") == "/dev/null"


async def test_signals_have_their_default_dispositions(
    anyio_backend: object, strays: Strays
) -> None:
    # This process ignores SIGPIPE (Python does) and SIGXFSZ.
    assert int(proc_status(os.getpid())["SigIgn"], 16) != 0
    detached = await aioproc.detach(["sleep", "60"])
    strays.add(detached.pid)
    status = proc_status(detached.pid)
    # Except glibc's reserved signals, which an environment may have us ignore (see below).
    assert int(status["SigIgn"], 16) & ~GLIBC_RESERVED == 0
    assert (status["SigBlk"], status["SigCgt"]) == ("0" * 16,) * 2


async def test_ignored_and_blocked_signals_do_not_leak(
    anyio_backend: object, strays: Strays
) -> None:
    """A detaching process under nohup, ignoring SIGHUP, with more ignored and blocked."""
    body = (
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGUSR1, signal.SIG_IGN)\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGTERM})\n"
        + DETACH_AND_REPORT
    )
    async with aioproc.open_process(helper_code(anyio_backend, body)) as helper:
        pid = strays.add(await _read_pid(helper))
        assert await helper.wait() == 0
    status = proc_status(pid)
    assert int(status["SigIgn"], 16) & ~GLIBC_RESERVED == 0
    assert int(status["SigBlk"], 16) == 0


# Signals 32 and 33 belong to glibc (thread cancellation, setxid): Python cannot set
# them (they are not in signal.valid_signals()), and glibc installs its own handlers
# on them when it needs them. Children of a CPython 3.13 process were seen to start
# with them ignored, and so were pytest-xdist's workers: whatever ignores them passes
# that on through exec, and we cannot reset them. tests/hostile_signals.py runs the
# suite that way (test_hostile_signals.py).
GLIBC_RESERVED = sum(1 << (sig - 1) for sig in range(32, signal.SIGRTMIN))


async def test_nothing_is_left_behind(anyio_backend: object, strays: Strays) -> None:
    """No zombie, no fd (both checked after every test), and no thread."""
    strays.add((await aioproc.detach(["true"])).pid)  # the loop may start threads of its own
    threads = thread_count()
    for _ in range(20):
        strays.add((await aioproc.detach(["sleep", "60"])).pid)
    assert not children_of_us()
    with anyio.fail_after(10):  # the thread watcher's waiter threads end soon after
        while thread_count() > threads:
            await anyio.sleep(0.01)


async def test_fire_and_forget_as_a_task(
    anyio_backend: object, strays: Strays, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            aioproc.detach, f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; exec sleep 60"
        )
    with anyio.fail_after(10):
        while not pid_file.exists():
            await anyio.sleep(0.01)
    pid = strays.add(int(pid_file.read_text()))
    assert strays.alive(pid)
    assert pid not in children_of_us()


# -- the arguments --------------------------------------------------------------------


async def test_stdio_are_devnull_by_default_and_files_by_path(
    anyio_backend: object, strays: Strays, tmp_path: Path
) -> None:
    out, err, source = tmp_path / "out", tmp_path / "err", tmp_path / "in"
    out.write_text("before\n")
    source.write_text("from stdin\n")
    code = "import sys; print(sys.stdin.read().strip()); print('to stderr', file=sys.stderr)"
    detached = await aioproc.detach(py(code), stdin=source, stdout=out, stderr=str(err))
    strays.add(detached.pid)
    await _gone(strays, detached.pid)
    assert out.read_text() == "before\nfrom stdin\n"  # appended
    assert err.read_text() == "to stderr\n"  # created


async def test_stderr_to_stdout_and_an_fd(
    anyio_backend: object, strays: Strays, tmp_path: Path
) -> None:
    with open(tmp_path / "log", "ab") as log:
        detached = await aioproc.detach(
            ["sh", "-c", "echo out; echo err >&2"], stdout=log.fileno(), stderr=aioproc.STDOUT
        )
    strays.add(detached.pid)
    await _gone(strays, detached.pid)
    assert sorted((tmp_path / "log").read_text().split()) == ["err", "out"]


async def test_cwd_env_and_umask(anyio_backend: object, strays: Strays, tmp_path: Path) -> None:
    out = tmp_path / "out"
    detached = await aioproc.detach(
        ["sh", "-c", 'pwd; echo "$GREETING"; umask'],
        stdout=out,  # relative paths are ours, not cwd's: this one is absolute anyway
        cwd="/",
        env={"GREETING": "hello", "PATH": os.environ["PATH"]},
        umask=0o027,
    )
    strays.add(detached.pid)
    await _gone(strays, detached.pid)
    assert out.read_text().split() == ["/", "hello", "0027"]


async def test_the_pid_file_is_written_atomically(
    anyio_backend: object, strays: Strays, tmp_path: Path
) -> None:
    pid_file = tmp_path / "worker.pid"
    pid_file.write_text("stale\n")
    detached = await aioproc.detach(["sleep", "60"], pid_file=pid_file)
    strays.add(detached.pid)
    assert pid_file.read_text() == f"{detached.pid}\n"
    assert detached.pid_file == pid_file
    assert os.listdir(tmp_path) == ["worker.pid"]  # no temporary file left
    assert pid_file.stat().st_mode & 0o777 == 0o644


async def test_a_pid_file_that_cannot_be_written_starts_nothing(
    anyio_backend: object, tmp_path: Path
) -> None:
    token = _token()
    with pytest.raises(FileNotFoundError) as caught:
        await aioproc.detach(["sleep", token], pid_file=tmp_path / "no" / "dir" / "x.pid")
    assert str(tmp_path / "no" / "dir") in str(caught.value)
    assert not _sleeping(token)


async def test_pid_file_errors_name_the_pid_file(anyio_backend: object, tmp_path: Path) -> None:
    """Not the temporary file it is written through: the path the caller gave."""
    token = _token()
    with pytest.raises(FileNotFoundError) as caught:
        await aioproc.detach(["sleep", token], pid_file="/nonexistent/p.pid")
    assert caught.value.filename == "/nonexistent/p.pid"
    assert str(caught.value) == "[Errno 2] No such file or directory: '/nonexistent/p.pid'"
    # Renaming into place fails (a directory is there): the command was started, and is killed.
    in_the_way = tmp_path / "in-the-way.pid"
    in_the_way.mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        await aioproc.detach(["sleep", token], pid_file=in_the_way)
    assert caught.value.filename == str(in_the_way)
    assert ".tmp" not in str(caught.value)
    assert not await _settled(token)
    assert os.listdir(tmp_path) == ["in-the-way.pid"]


# -- failures ---------------------------------------------------------------------------


def _not_executable(tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    return {"command": [str(script)]}


@pytest.mark.parametrize(
    "arguments",
    [
        {"command": ["no-such-program-xyz"]},
        _not_executable,
        {"command": ["true"], "cwd": "/no/such/dir"},
        {"command": ["true"], "pass_fds": [987]},
    ],
    ids=["missing program", "not executable", "missing cwd", "closed fd in pass_fds"],
)
async def test_exec_errors_are_raised_as_open_process_raises_them(
    anyio_backend: object, tmp_path: Path, arguments: Any
) -> None:
    kwargs = dict(arguments(tmp_path) if callable(arguments) else arguments)
    command = kwargs.pop("command")
    with pytest.raises(Exception) as by_open_process:  # noqa: PT011 - compared below
        await aioproc.open_process(command, **kwargs)
    with pytest.raises(type(by_open_process.value)) as by_detach:
        await aioproc.detach(command, **kwargs)
    assert str(by_detach.value) == str(by_open_process.value)


# Bad input: tests/test_bad_input.py walks detach's table in the README.


# -- cancellation -----------------------------------------------------------------------


async def test_cancelled_before_it_starts_starts_nothing(anyio_backend: object) -> None:
    token = _token()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await aioproc.detach(["sleep", token])
    assert scope.cancelled_caught
    assert not _sleeping(token)


async def test_cancelled_while_the_intermediate_runs_still_returns_the_pid(
    anyio_backend: object, strays: Strays, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aioproc._unattended import _detach

    real_reap = _detach._reap

    async def cancel_then_reap(pid: int, backend: Any) -> None:
        scope.cancel()
        await real_reap(pid, backend)

    monkeypatch.setattr(_detach, "_reap", cancel_then_reap)
    detached = None
    with anyio.CancelScope() as scope:
        detached = await aioproc.detach(["sleep", "60"])
        strays.add(detached.pid)
        await anyio.sleep(60)  # the cancellation arrives here, at the next checkpoint
    assert scope.cancelled_caught
    assert detached is not None
    assert strays.alive(detached.pid)


async def test_cancelled_at_any_moment_never_loses_a_pid(
    anyio_backend: object, strays: Strays
) -> None:
    """Either detach returns the pid, or the command never started: no unknown survivor."""
    token = _token()
    returned: list[int] = []
    for attempt in range(30):
        with anyio.move_on_after(attempt * 0.0005):
            returned.append(strays.add((await aioproc.detach(["sleep", token])).pid))
    assert _sleeping(token) <= set(returned)


def _token() -> str:
    """A duration for ``sleep`` that no other process on the machine sleeps for."""
    return f"{60 + random.random():.9f}"


def _sleeping(token: str) -> set[int]:
    """The pids of the processes running ``sleep token``."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read() == f"sleep\0{token}\0".encode():
                    found.add(int(entry))
        except OSError:
            continue
    return found


# -- the command line -------------------------------------------------------------------


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "aioproc", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=60)


def test_cli_prints_the_pid_and_exits_0(strays: Strays, tmp_path: Path) -> None:
    out, pid_file = tmp_path / "out", tmp_path / "pid"
    shell = "echo $$; echo to stderr >&2; exec sleep 60"
    done = _cli(
        "detach",
        "--stdout",
        "out",
        "--pid-file",
        str(pid_file),
        "--",
        "sh",
        "-c",
        shell,
        cwd=tmp_path,
    )
    assert (done.returncode, done.stderr) == (0, "")
    pid = strays.add(int(done.stdout))
    assert strays.alive(pid)
    assert pid_file.read_text() == f"{pid}\n"
    _wait_for_text(out, f"{pid}\nto stderr\n")


def _wait_for_text(path: Path, text: str) -> None:
    deadline = time.monotonic() + 10
    while not (path.exists() and path.read_text() == text):
        assert time.monotonic() < deadline, f"{path} never had {text!r}"
        time.sleep(0.01)


def test_cli_takes_cwd_and_stderr(strays: Strays, tmp_path: Path) -> None:
    err = tmp_path / "err"
    done = _cli("detach", "--stderr", str(err), "--cwd", str(tmp_path), "--", "sh", "-c", "pwd >&2")
    assert done.returncode == 0, done.stderr
    strays.add(int(done.stdout))
    _wait_for_text(err, f"{tmp_path}\n")


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--", "no-such-program-xyz"], 127, "No such file or directory: 'no-such-program-xyz'"),
        (["--", "/etc/passwd"], 126, "Permission denied: '/etc/passwd'"),
        (["--cwd", "/no/such/dir", "--", "true"], 125, "No such file or directory: '/no/such/dir'"),
        (["--stdout", "/no/such/dir/out", "--", "true"], 125, "/no/such/dir/out"),
        (
            ["--pid-file", "/nonexistent/p.pid", "--", "true"],
            125,
            "No such file or directory: '/nonexistent/p.pid'",
        ),
        # Permission denied, even to root: 125 all the same, 126 is for the program.
        (
            ["--stdout", "/sys/aioproc.log", "--", "true"],
            125,
            "Permission denied: '/sys/aioproc.log'",
        ),
        (
            ["--pid-file", "/sys/aioproc.pid", "--", "true"],
            125,
            "Permission denied: '/sys/aioproc.pid'",
        ),
        (["--", "/"], 126, "Permission denied: '/'"),
        ([], 2, "the following arguments are required: command"),
    ],
    ids=[
        "not found",
        "not executable",
        "bad cwd",
        "bad stdout",
        "pid file in a missing dir",
        "stdout not writable",
        "pid file not writable",
        "a directory as the program",
        "no command",
    ],
)
def test_cli_reports_errors(args: list[str], status: int, message: str) -> None:
    done = _cli("detach", *args)
    assert done.returncode == status
    assert done.stdout == ""
    assert message in done.stderr
    assert ".tmp" not in done.stderr  # never the name of our temporary file
    assert done.stderr.startswith(("python -m aioproc detach: ", "usage: python -m aioproc detach"))


# -- cancelled the way asyncio users cancel -----------------------------------------------


@pytest.mark.parametrize("with_pid_file", [True, False], ids=["pid file", "no pid file"])
async def test_native_cancellation_twice_while_the_command_starts(
    anyio_backend: object,
    strays: Strays,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    with_pid_file: bool,
) -> None:
    """``Task.cancel()`` twice after the fork: the caller learns the pid, or its pid file
    has it, or the command does not run on."""
    from aioproc._unattended import _detach

    real_reap = _detach._reap
    forked, go_on = anyio.Event(), anyio.Event()

    async def reap_when_told(pid: int, backend: Any) -> None:
        forked.set()
        await go_on.wait()  # both cancellations are sent meanwhile
        await real_reap(pid, backend)

    async def second_cancellation() -> None:
        await anyio.sleep(0.01)
        go_on.set()

    monkeypatch.setattr(_detach, "_reap", reap_when_told)
    token, pid_file = _token(), tmp_path / "sleep.pid"
    outcome = await cancel_natively(
        lambda: aioproc.detach(["sleep", token], pid_file=pid_file if with_pid_file else None),
        [forked.wait, second_cancellation],
    )
    assert outcome.error is None
    running = await _settled(token)
    for pid in running:
        strays.add(pid)
    if outcome.value is not None:  # trio: the shield held, detach returned
        assert running == {outcome.value.pid}
    else:
        assert outcome.cancelled
        assert running == ({int(pid_file.read_text())} if with_pid_file else set())
    if with_pid_file:
        assert pid_file.read_text() == f"{running.pop()}\n"
    assert os.listdir(tmp_path) == (["sleep.pid"] if with_pid_file else [])


async def test_native_cancellation_at_any_moment_never_loses_a_pid(
    anyio_backend: object, strays: Strays, tmp_path: Path
) -> None:
    """``asyncio.wait_for`` (on trio, ``trio.move_on_after``) with deadlines across the fork."""
    token = _token()
    known: set[int] = set()
    for attempt in range(30):
        pid_file = tmp_path / f"{attempt}.pid" if attempt % 2 else None
        detached = await _within(
            attempt * 0.0004, aioproc.detach(["sleep", token], pid_file=pid_file)
        )
        if detached is not None:
            known.add(strays.add(detached.pid))
        if pid_file is not None and pid_file.exists():
            known.add(strays.add(int(pid_file.read_text())))
    running = await _settled(token)
    assert running <= known
    assert [name for name in os.listdir(tmp_path) if not name.endswith(".pid")] == []


async def _within(seconds: float, awaitable: Any) -> Any:
    """Await ``awaitable`` with a deadline of the loop's own library; None if it passed."""
    if sniffio.current_async_library() == "trio":
        import trio

        with trio.move_on_after(seconds):
            return await awaitable
        return None
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        return None


async def _settled(token: str) -> set[int]:
    """The processes running ``sleep token`` once those killed are gone (SIGKILL takes a moment)."""
    with anyio.fail_after(10):
        while True:
            await anyio.sleep(0.05)
            running = _running(token)
            await anyio.sleep(0.05)
            if running == _running(token):
                return running


def _running(token: str) -> set[int]:
    found = set()
    for pid in _sleeping(token):
        try:
            if proc_stat(pid)[0] != "Z":
                found.add(pid)
        except OSError:
            continue
    return found


# -- paths that block when opened ---------------------------------------------------------


@pytest.mark.parametrize("name", ["stdout", "stdin"])
async def test_a_fifo_with_nobody_at_the_other_end_does_not_freeze_the_loop(
    anyio_backend: object, tmp_path: Path, name: str
) -> None:
    """The open waits for the other end; the loop runs meanwhile, so a deadline can fire."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    token = _token()
    # Should the open block the loop, this frees it after a while, for the test to fail
    # rather than hang: the deadline has passed by then, and detach returns regardless.
    rescue = threading.Timer(20, _open_the_other_end, (fifo, name))
    rescue.start()
    try:
        with anyio.move_on_after(0.2) as scope:
            await aioproc.detach(["sleep", token], **{name: fifo})  # type: ignore[arg-type]
    finally:
        rescue.cancel()
    assert scope.cancelled_caught
    assert not _sleeping(token)
    # The abandoned open is released (a thread opens the other end until the open
    # has returned) and closes what it opened, in threads a loaded machine may run
    # late. Before the open returns no fd names the FIFO, so wait for the releasing
    # thread to end first, then for the fd to close; the leak check runs after.
    await _abandoned_open_finished(fifo)


@pytest.mark.parametrize("name", ["stdout", "stdin"])
async def test_a_fifo_open_cancelled_before_it_starts_leaves_no_thread(
    anyio_backend: object, tmp_path: Path, name: str
) -> None:
    """Cancelled before its worker thread ran, the open never happens, and nothing
    is left trying to release it."""
    from aioproc._unattended._detach import _Opening

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    flags = os.O_RDONLY if name == "stdin" else os.O_WRONLY
    with anyio.CancelScope() as scope:
        scope.cancel()
        await _Opening(fifo, flags).run()
    await anyio.sleep(0.1)
    assert not [t for t in threading.enumerate() if t.name.startswith("aioproc detach")]


@pytest.mark.parametrize("name", ["stdout", "stdin"])
async def test_a_fifo_works_once_the_other_end_is_opened(
    anyio_backend: object, strays: Strays, tmp_path: Path, name: str
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    command = "echo through the fifo" if name == "stdout" else f"cat > {tmp_path / 'out'}"
    received: list[bytes] = []

    def other_end() -> None:  # its open waits for detach's, and detach's for it
        if name == "stdout":
            with open(fifo, "rb") as reader:
                received.append(reader.read())
        else:
            with open(fifo, "wb") as writer:
                writer.write(b"into the fifo\n")

    thread = threading.Thread(target=other_end)
    thread.start()
    try:
        detached = await aioproc.detach(command, **{name: fifo})  # type: ignore[arg-type]
        strays.add(detached.pid)
        await _gone(strays, detached.pid)
    finally:
        _open_the_other_end(fifo, "stdin" if name == "stdout" else "stdout")  # if detach failed
        await anyio.to_thread.run_sync(thread.join)
    if name == "stdout":
        assert received == [b"through the fifo\n"]
    else:
        assert (tmp_path / "out").read_bytes() == b"into the fifo\n"


async def _abandoned_open_finished(fifo: Path) -> None:
    def releasing() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("aioproc detach")]

    def holding() -> list[str]:
        return [fd for fd in _our_fds() if os.path.realpath(f"/proc/self/fd/{fd}") == str(fifo)]

    for _ in range(3000):
        if not releasing() and not holding():
            return
        await anyio.sleep(0.01)
    pytest.fail(f"after 30 s: releasing threads {releasing()}, fds on the FIFO {holding()}")


def _our_fds() -> list[str]:
    try:
        return os.listdir("/proc/self/fd")
    except OSError:
        return []


def _open_the_other_end(fifo: Path, name: str) -> None:
    flags = os.O_RDONLY if name == "stdout" else os.O_WRONLY
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, flags | os.O_NONBLOCK))
