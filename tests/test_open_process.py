"""Spawn and talk: the three ways to open a process, pipes, exit status, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import aioproc

from .helpers import pid_alive, py, running, with_default_signals


async def test_async_with_opener(engine: str) -> None:
    async with aioproc.open_process(["sh", "-c", "exit 3"], engine=engine) as process:
        assert isinstance(process, aioproc.Process)
        assert await process.wait() == 3
    assert process.returncode == 3


async def test_await_then_aclose(engine: str) -> None:
    process = await aioproc.open_process(["sh", "-c", "exit 4"], engine=engine)
    try:
        assert await process.wait() == 4
    finally:
        await process.aclose()
    assert process.returncode == 4


async def test_async_with_await(engine: str) -> None:
    async with await aioproc.open_process("exit 5", engine=engine) as process:
        assert await process.wait() == 5


async def test_php_proc_open_example(engine: str) -> None:
    async with aioproc.open_process(["bash"], cwd="/tmp", engine=engine) as bash:
        assert bash.stdin is not None
        assert bash.stdout is not None
        await bash.stdin.send(b"pwd\n")
        await bash.stdin.aclose()
        assert await bash.stdout.read_all() == b"/tmp\n"
        assert await bash.wait() == 0


async def test_pid_and_returncode_while_running(engine: str) -> None:
    async with aioproc.open_process(["cat"], engine=engine) as process:
        assert process.pid > 0
        assert pid_alive(process.pid)
        assert process.returncode is None
        assert process.stdin is not None
        await process.stdin.aclose()
        assert await process.wait() == 0


async def test_returncode_appears_without_wait(engine: str) -> None:
    """Like Popen.returncode (and asyncio's), it is set once the child exits, wait() or not."""
    async with aioproc.open_process(["true"], engine=engine) as process:
        with anyio.fail_after(10):
            while process.returncode is None:
                await anyio.sleep(0.01)
        assert process.returncode == 0


@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGSEGV, signal.SIGABRT]
)
async def test_killed_by_signal_gives_minus_n(engine: str, sig: signal.Signals) -> None:
    # No core file for the signals that would dump one.
    async with aioproc.open_process(
        with_default_signals(["sh", "-c", "ulimit -c 0; exec sleep 30"], sig), engine=engine
    ) as process:
        await running(process.pid, "sleep")  # past the wrappers' resets and exec
        process.send_signal(sig)
        assert await process.wait() == -sig


async def test_a_child_that_closes_stdout_and_runs_on(engine: str) -> None:
    """EOF on stdout says nothing about the exit: wait() and aclose() wait for the exit."""
    async with aioproc.open_process(
        ["sh", "-c", "exec >&- 2>&-; sleep 0.5; exit 7"], engine=engine
    ) as process:
        assert process.stdout is not None
        assert await process.stdout.read_all() == b""
        with anyio.fail_after(10):
            assert await process.wait() == 7
    process = await aioproc.open_process(["sh", "-c", "exec >&-; sleep 0.5"], engine=engine)
    with anyio.fail_after(10):
        await process.aclose()
    assert process.returncode == 0


async def test_terminate_and_kill(engine: str) -> None:
    async with aioproc.open_process(["sleep", "30"], engine=engine) as process:
        process.terminate()
        assert await process.wait() == -signal.SIGTERM
    async with aioproc.open_process(["sleep", "30"], engine=engine) as process:
        process.kill()
        assert await process.wait() == -signal.SIGKILL


async def test_signals_after_exit_are_noops(engine: str) -> None:
    async with aioproc.open_process(["true"], engine=engine) as process:
        assert await process.wait() == 0
        process.send_signal(signal.SIGTERM)
        process.terminate()
        process.kill()
        process.kill(group=False)
    assert process.returncode == 0


async def test_concurrent_waits_all_get_the_status(engine: str) -> None:
    results: list[int] = []
    async with aioproc.open_process(["sleep", "0.2"], engine=engine) as process:

        async def waiter() -> None:
            results.append(await process.wait())

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(waiter)
    assert results == [0] * 5


async def test_cancelled_wait_then_wait_again(engine: str) -> None:
    async with aioproc.open_process(["sleep", "0.3"], engine=engine) as process:
        with anyio.move_on_after(0.05):
            await process.wait()
        assert process.returncode is None
        assert await process.wait() == 0


async def test_wait_returns_while_grandchild_holds_stdout(engine: str) -> None:
    # The grandchild inherits stdout and outlives the child by 30 s.
    async with aioproc.open_process(
        ["sh", "-c", "sleep 30 & echo $!; exit 3"], stdin=subprocess.DEVNULL, engine=engine
    ) as process:
        assert process.stdout is not None
        grandchild = int((await anext(process.stdout.lines())).decode())
        try:
            with anyio.fail_after(10):
                assert await process.wait() == 3
            assert pid_alive(grandchild), "wait() should not have waited for the grandchild"
        finally:
            os.kill(grandchild, signal.SIGKILL)


async def test_one_mib_through_cat_is_byte_exact(engine: str) -> None:
    data = os.urandom(1 << 20)
    async with aioproc.open_process(["cat"], engine=engine) as cat:
        assert cat.stdin is not None
        assert cat.stdout is not None
        stdin = cat.stdin

        async def feed() -> None:
            # Odd chunk sizes exercise partial writes.
            for start in range(0, len(data), 70001):
                await stdin.send(data[start : start + 70001])
            await stdin.aclose()

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            received = await cat.stdout.read_all()
    assert received == data
    assert cat.returncode == 0


async def test_stderr_to_stdout(engine: str) -> None:
    async with aioproc.open_process(
        "echo out; echo err >&2", stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT, engine=engine
    ) as process:
        assert process.stderr is None
        assert process.stdout is not None
        assert await process.stdout.read_all() == b"out\nerr\n"


async def test_devnull_and_inherit_give_no_streams(engine: str) -> None:
    async with aioproc.open_process(
        ["true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None, engine=engine
    ) as process:
        assert process.stdin is None
        assert process.stdout is None
        assert process.stderr is None
        assert await process.wait() == 0


async def test_stdout_to_file_object_and_fd(engine: str, tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with open(path, "wb") as f:
        async with aioproc.open_process(
            ["echo", "to file"], stdin=subprocess.DEVNULL, stdout=f, engine=engine
        ) as process:
            assert process.stdout is None
            await process.wait()
    assert path.read_bytes() == b"to file\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        async with aioproc.open_process(
            ["echo", "to fd"], stdin=subprocess.DEVNULL, stdout=fd, engine=engine
        ) as process:
            await process.wait()
    finally:
        os.close(fd)
    assert path.read_bytes() == b"to file\nto fd\n"


async def test_stdin_from_file(engine: str, tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"from a file\n")
    with open(path, "rb") as f:
        result = await aioproc.run_process(["cat"], stdin=f, engine=engine)
    assert result.stdout == b"from a file\n"


async def test_cwd_and_env(engine: str, tmp_path: Path) -> None:
    result = await aioproc.run_process(
        'printf "%s %s" "$PWD" "$AIOPROC_TEST"',
        cwd=tmp_path,
        env={"AIOPROC_TEST": "value", "PATH": os.environ["PATH"]},
        engine=engine,
    )
    assert result.stdout == f"{tmp_path} value".encode()


async def test_str_bytes_and_path_commands_go_through_the_shell(engine: str) -> None:
    for command in ("echo $((1+2))", b"echo $((1+2))"):
        result = await aioproc.run_process(command, engine=engine)
        assert result.stdout == b"3\n"


async def test_sequence_of_str_bytes_and_paths(engine: str) -> None:
    result = await aioproc.run_process([Path("/bin/echo"), b"bytes", "str"], engine=engine)
    assert result.stdout == b"bytes str\n"


async def test_pass_fds(engine: str) -> None:
    read_fd, write_fd = os.pipe()
    try:
        async with aioproc.open_process(
            py(f"import os; os.write({write_fd}, b'passed')"),
            pass_fds=[write_fd],
            engine=engine,
        ) as process:
            await process.wait()
        assert os.read(read_fd, 100) == b"passed"
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_fds_are_not_inherited_without_pass_fds(engine: str) -> None:
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)
    try:
        result = await aioproc.run_process(
            py(f"import os, sys; os.fstat({write_fd})"), check=False, engine=engine
        )
        assert result.returncode == 1
        assert b"Bad file descriptor" in result.stderr
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_umask(engine: str) -> None:
    result = await aioproc.run_process("umask", umask=0o027, engine=engine)
    assert result.stdout.strip() == b"0027"


@pytest.mark.parametrize("how", ["process_group", "start_new_session"])
async def test_own_process_group(engine: str, how: str) -> None:
    kwargs = {"process_group": 0} if how == "process_group" else {"start_new_session": True}
    async with aioproc.open_process(
        py("import os; print(os.getpgid(0), os.getsid(0))"), engine=engine, **kwargs
    ) as process:
        assert process.leads_group
        assert process.stdout is not None
        pgid, sid = map(int, (await process.stdout.read_all()).split())
    assert pgid == process.pid
    assert (sid == process.pid) == (how == "start_new_session")


async def test_group_signal_needs_a_group(engine: str) -> None:
    async with aioproc.open_process(["sleep", "30"], engine=engine) as process:
        assert not process.leads_group
        with pytest.raises(ValueError, match="does not lead a process group"):
            process.send_signal(signal.SIGTERM, group=True)
        process.kill()


async def test_group_signal_reaches_the_grandchild(engine: str) -> None:
    async with aioproc.open_process(
        ["sh", "-c", "sleep 30 & echo $!; wait"], process_group=0, engine=engine
    ) as process:
        assert process.stdout is not None
        grandchild = int((await anext(process.stdout.lines())).decode())
        process.kill(group=True)
        assert await process.wait() == -signal.SIGKILL
    with anyio.fail_after(10):
        while pid_alive(grandchild):
            await anyio.sleep(0.01)


def test_asyncio_engine_needs_asyncio() -> None:
    import trio

    async def main() -> None:
        with pytest.raises(RuntimeError, match="engine='asyncio' needs an asyncio event loop"):
            await aioproc.open_process(["true"], engine="asyncio")

    trio.run(main)


async def test_child_watcher_name(anyio_backend: object) -> None:
    expected = os.environ.get("AIOPROC_CHILD_WATCHER") or "pidfd"
    assert aioproc.child_watcher() == expected


def test_windows_gets_a_clear_error() -> None:
    code = "import sys; sys.platform = 'win32'; import aioproc"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert "ImportError: aioproc supports POSIX systems" in result.stderr
    assert "Windows is not supported" in result.stderr
