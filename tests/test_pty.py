"""pty=: the child on a real terminal of its own, read to the last byte, stopped in order.

Every test here starts real children on real pseudo-terminals, on asyncio,
uvloop and trio. The spawn has two paths (posix_spawn, and Popen when an
option such as ``cwd`` needs it): the tests of the terminal session run both.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys

import anyio
import anyio.lowlevel
import pytest

import aioproc

from .cancel_sweep import Sweep
from .helpers import py

# cwd= sends the spawn through Popen and TIOCSCTTY; without it, posix_spawn.
SPAWN_PATHS = {"posix_spawn": {}, "popen": {"cwd": "/"}}


@pytest.fixture(params=list(SPAWN_PATHS), ids=list(SPAWN_PATHS))
def spawn_path(request: pytest.FixtureRequest) -> dict[str, str]:
    return SPAWN_PATHS[request.param]


SESSION = """
import fcntl, json, os, sys
print(json.dumps({
    "isatty": [os.isatty(0), os.isatty(1), os.isatty(2)],
    "pid": os.getpid(), "pgid": os.getpgid(0), "sid": os.getsid(0),
    "tcgetpgrp": os.tcgetpgrp(0),
    "ttyname": os.ttyname(0),
    "dev_tty": os.open("/dev/tty", os.O_RDWR) >= 0,
    "size": list(os.get_terminal_size(1)),
    "term": os.environ.get("TERM"),
}))
"""


async def session_of(**options: object) -> dict[str, object]:
    options.setdefault("pty", True)
    async with aioproc.open_process(py(SESSION), **options) as child:  # type: ignore[arg-type]
        assert child.pty is not None
        name = child.pty.name
        output = await child.stdout.read_all()  # type: ignore[union-attr]
        assert await child.wait() == 0, output
    seen: dict[str, object] = json.loads(output)
    assert seen["ttyname"] == name
    return seen


async def test_the_child_is_a_terminal_session(spawn_path: dict[str, str]) -> None:
    seen = await session_of(**spawn_path)
    assert seen["isatty"] == [True, True, True]
    assert seen["pid"] == seen["pgid"] == seen["sid"] == seen["tcgetpgrp"]
    assert seen["dev_tty"] is True
    assert seen["size"] == [80, 24]
    assert seen["term"] == "xterm-256color"


async def test_size_and_term_options(spawn_path: dict[str, str]) -> None:
    seen = await session_of(pty=aioproc.Pty(rows=50, cols=132, term="vt100"), **spawn_path)
    assert seen["size"] == [132, 50]
    assert seen["term"] == "vt100"


async def test_env_term_wins_and_term_none_keeps_ours() -> None:
    env = {**os.environ, "TERM": "dumb"}
    assert (await session_of(env=env))["term"] == "dumb"
    env = {key: value for key, value in os.environ.items() if key != "TERM"}
    assert (await session_of(env=env, pty=aioproc.Pty(term=None)))["term"] is None


async def test_process_pty_is_none_without_one() -> None:
    async with aioproc.open_process(["true"]) as child:
        assert child.pty is None


# -- nothing is lost at the end ---------------------------------------------------------

WRITE_AND_EXIT = """
import os, random, sys
size = int(sys.argv[1])
data = random.Random(size).randbytes(size)
view = memoryview(data)
while view:
    view = view[os.write(1, view):]
"""


@pytest.mark.parametrize("size", [10, 4096, 100_000, 1 << 20, 64 << 20])
async def test_write_and_exit_is_read_whole(size: int) -> None:
    # Raw mode: the bytes cross unchanged, and the child exits right after writing.
    expected = hashlib.sha256(random.Random(size).randbytes(size)).hexdigest()
    async with aioproc.open_process(
        [sys.executable, "-c", WRITE_AND_EXIT, str(size)], pty=aioproc.Pty(raw=True)
    ) as child:
        digest = hashlib.sha256()
        received = 0
        async for chunk in child.stdout:  # type: ignore[union-attr]
            digest.update(chunk)
            received += len(chunk)
        assert received == size
        assert digest.hexdigest() == expected
        assert await child.wait() == 0
        with pytest.raises(anyio.EndOfStream):  # again: still the end, never an OSError
            await child.stdout.receive()  # type: ignore[union-attr]


async def test_a_thousand_writes_and_exits_lose_nothing() -> None:
    payload = "".join(chr(ord("a") + i % 26) for i in range(3000))
    for _ in range(1000):
        result = await aioproc.run_process(["printf", "%s", payload], pty=True)
        assert result.stdout == payload.encode()


async def test_the_end_waits_for_a_grandchild_holding_the_terminal() -> None:
    # The child exits at once; its background job (immune to the hang-up the kernel sends
    # the foreground group when the session leader exits) writes later, on the same terminal.
    script = "trap '' HUP; (sleep 0.2; echo late) & echo early"
    result = await aioproc.run_process(["sh", "-c", script], pty=True)
    assert result.stdout == b"early\r\nlate\r\n"


# -- how a terminal's output differs from a pipe's -----------------------------------------


async def test_cooked_mode_turns_newlines_into_crlf() -> None:
    result = await aioproc.run_process(["printf", "a\\nb\\n"], pty=True)
    assert result.stdout == b"a\r\nb\r\n"


async def test_raw_mode_passes_bytes_unchanged() -> None:
    result = await aioproc.run_process(["printf", "a\\nb\\r\\n"], pty=aioproc.Pty(raw=True))
    assert result.stdout == b"a\nb\r\n"


async def test_echo_shows_input_in_the_output_and_echo_false_does_not() -> None:
    result = await aioproc.run_process(["cat"], pty=True, input=b"hello\n")
    assert result.stdout == b"hello\r\nhello\r\n"  # the echo, then cat's copy
    result = await aioproc.run_process(["cat"], pty=aioproc.Pty(echo=False), input=b"hello\n")
    assert result.stdout == b"hello\r\n"


async def test_stdout_and_stderr_are_merged_by_default() -> None:
    code = "import os, sys; print('out', flush=True); print('err', file=sys.stderr, flush=True); print(os.isatty(2))"
    result = await aioproc.run_process(py(code), pty=True)
    assert result.stdout == b"out\r\nerr\r\nTrue\r\n"
    assert result.stderr is None


async def test_stderr_pipe_keeps_stderr_apart() -> None:
    code = "import os, sys; print('out', os.isatty(1)); print('err', os.isatty(2), file=sys.stderr)"
    result = await aioproc.run_process(py(code), pty=True, stderr=subprocess.PIPE)
    assert result.stdout == b"out True\r\n"
    assert result.stderr == b"err False\n"


async def test_stderr_devnull_and_stderr_inherited(spawn_path: dict[str, str]) -> None:
    code = "import sys; print('err', file=sys.stderr); print('out')"
    result = await aioproc.run_process(py(code), pty=True, stderr=subprocess.DEVNULL, **spawn_path)
    assert result.stdout == b"out\r\n"


async def test_a_canonical_line_is_cut_at_4096_bytes() -> None:
    # Cooked mode keeps at most 4095 bytes of a line, plus its end: the rest is dropped.
    result = await aioproc.run_process(
        ["wc", "-c"], pty=aioproc.Pty(echo=False), input=b"x" * 5000 + b"\n"
    )
    assert int(result.stdout) == 4096


async def test_the_child_never_sees_o_nonblock() -> None:
    code = (
        "import fcntl, os; print('ready', flush=True); input();"
        "print([bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK) for fd in (0, 1, 2)])"
    )
    async with aioproc.open_process(py(code), pty=True) as child:
        await aioproc.expect(child.stdout, b"ready\r\n", timeout=30)  # type: ignore[arg-type]
        # By now our side of the master is non-blocking (the streams set it on first use).
        import fcntl

        assert fcntl.fcntl(child.stdout._fd, fcntl.F_GETFL) & os.O_NONBLOCK  # type: ignore[union-attr]
        await child.stdin.send(b"go\n")  # type: ignore[union-attr]
        found = await aioproc.expect(child.stdout, rb"\[.*\]", timeout=30)  # type: ignore[arg-type]
        assert found.after == b"[False, False, False]"


# -- signals and control characters --------------------------------------------------------


async def test_interrupt_gives_minus_sigint(spawn_path: dict[str, str]) -> None:
    async with aioproc.open_process(
        ["sh", "-c", "echo ready; exec sleep 60"], pty=True, **spawn_path
    ) as child:
        await aioproc.expect(child.stdout, b"ready", timeout=30)  # type: ignore[arg-type]
        assert child.pty is not None
        child.pty.interrupt()
        assert await child.wait() == -signal.SIGINT


async def test_interrupt_in_raw_mode_signals_the_foreground_group() -> None:
    async with aioproc.open_process(
        ["sh", "-c", "echo ready; exec sleep 60"], pty=aioproc.Pty(raw=True)
    ) as child:
        await aioproc.expect(child.stdout, b"ready", timeout=30)  # type: ignore[arg-type]
        assert child.pty is not None
        child.pty.interrupt()
        assert await child.wait() == -signal.SIGINT


async def test_ctrl_c_typed_reaches_the_foreground_job_of_a_shell() -> None:
    # The inner sh, in the foreground, dies of ^C; the outer one traps it and goes on.
    script = "trap 'echo trapped' INT; sh -c 'echo ready; exec sleep 60'; echo after $?"
    async with aioproc.open_process(["sh", "-c", script], pty=True) as child:
        await aioproc.expect(child.stdout, b"ready", timeout=30)  # type: ignore[arg-type]
        await child.stdin.send(b"\x03")  # type: ignore[union-attr]
        found = await aioproc.expect(child.stdout, rb"after (\d+)", timeout=30)  # type: ignore[arg-type]
        assert found.group(1) == b"130"  # 128 + SIGINT


SIGWINCH_CHILD = """
import os, signal, sys
def report(signum, frame):
    size = os.get_terminal_size(0)
    print(f"size {size.lines}x{size.columns}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGWINCH, report)
print("ready", flush=True)
while True:
    signal.pause()
"""


async def test_resize_sends_sigwinch_with_the_new_size(spawn_path: dict[str, str]) -> None:
    async with aioproc.open_process(py(SIGWINCH_CHILD), pty=True, **spawn_path) as child:
        await aioproc.expect(child.stdout, b"ready", timeout=30)  # type: ignore[arg-type]
        assert child.pty is not None
        assert child.pty.size == (24, 80)
        child.pty.resize(50, 132)
        assert child.pty.size == (50, 132)
        found = await aioproc.expect(child.stdout, rb"size (\d+)x(\d+)", timeout=30)  # type: ignore[arg-type]
        assert found.group(1, 2) == (b"50", b"132")
        assert await child.wait() == 0


async def test_send_eof_ends_the_input_even_mid_line() -> None:
    async with aioproc.open_process(["cat"], pty=aioproc.Pty(echo=False)) as child:
        assert child.pty is not None
        await child.stdin.send(b"one\n")  # type: ignore[union-attr]
        await aioproc.expect(child.stdout, b"one\r\n", timeout=30)  # type: ignore[arg-type]
        await child.stdin.send(b"no line end")  # type: ignore[union-attr]
        await child.pty.send_eof()  # VEOF twice: one hands the line over, one ends the input
        assert await child.wait() == 0
        assert await child.stdout.read_all() == b"no line end"  # type: ignore[union-attr]


async def test_send_eof_at_the_start_of_a_line() -> None:
    async with aioproc.open_process(["cat"], pty=aioproc.Pty(echo=False)) as child:
        assert child.pty is not None
        await child.pty.send_eof()
        assert await child.wait() == 0
        await child.stdin.aclose()  # type: ignore[union-attr]
        with pytest.raises(anyio.ClosedResourceError, match="input was closed"):
            await child.pty.send_eof()


async def test_a_dev_tty_password_prompt_answered_through_expect() -> None:
    code = (
        "import getpass, sys; sys.stdin.close();"  # the prompt must come from /dev/tty itself
        "pw = getpass.getpass('Password: '); print('welcome' if pw == 's3cret' else 'denied')"
    )
    async with aioproc.open_process(py(code), pty=True) as child:
        await aioproc.expect(child.stdout, b"Password: ", timeout=30)  # type: ignore[arg-type]
        await child.stdin.send(b"s3cret\n")  # type: ignore[union-attr]
        found = await aioproc.expect(child.stdout, [b"welcome", b"denied"], timeout=30)  # type: ignore[arg-type]
        assert found.index == 0
        assert b"s3cret" not in found.before  # getpass turned echo off
        assert await child.wait() == 0


# -- stopping -------------------------------------------------------------------------------


async def test_leaving_normally_reaps_before_closing_the_master() -> None:
    # Nobody reads: the output is dropped while waiting, and the child's own status comes back.
    script = "yes | head -c 1000000; exit 3"
    async with aioproc.open_process(["sh", "-c", script], pty=True) as child:
        pass
    assert child.returncode == 3


async def test_stop_types_eof_first() -> None:
    with pytest.raises(KeyError):
        async with aioproc.open_process(["cat"], pty=True, grace=30) as child:
            await child.stdin.send(b"x")  # type: ignore[union-attr]
            raise KeyError
    assert child.returncode == 0  # cat read EOF and exited by itself


async def test_stop_hangs_up_a_child_that_ignores_eof() -> None:
    with pytest.raises(KeyError):
        async with aioproc.open_process(
            ["sh", "-c", "echo ready; exec sleep 60"], pty=True, grace=0.1
        ) as child:
            await aioproc.expect(child.stdout, b"ready", timeout=30)  # type: ignore[arg-type]
            raise KeyError
    assert child.returncode == -signal.SIGHUP


async def test_stop_kills_a_child_that_ignores_the_hang_up() -> None:
    script = "trap '' HUP; echo ready; exec sleep 60"
    with pytest.raises(KeyError):
        async with aioproc.open_process(["sh", "-c", script], pty=True, grace=0.1) as child:
            await aioproc.expect(child.stdout, b"ready", timeout=30)  # type: ignore[arg-type]
            raise KeyError
    assert child.returncode == -signal.SIGKILL


async def test_stop_lets_a_child_blocked_on_output_finish() -> None:
    # The child fills the terminal, then exits on EOF: stop() drains so it can get there.
    code = "import sys; sys.stdout.write('x' * 1_000_000); sys.stdout.flush(); sys.stdin.read()"
    with pytest.raises(KeyError):
        async with aioproc.open_process(py(code), pty=aioproc.Pty(echo=False), grace=30) as child:
            raise KeyError
    assert child.returncode == 0


async def test_deliver_cancel_replaces_the_stop_sequence() -> None:
    async def stop(process: aioproc.Process) -> None:
        process.send_signal(signal.SIGUSR1)

    with pytest.raises(KeyError):
        async with aioproc.open_process(
            ["sh", "-c", "echo ready; exec sleep 60"], pty=True, deliver_cancel=stop
        ) as child:
            await aioproc.expect(child.stdout, b"ready", timeout=30)  # type: ignore[arg-type]
            raise KeyError
    assert child.returncode == -signal.SIGUSR1


async def talk_then_stop() -> None:
    # Through the whole stop sequence: EOF ignored, hang-up ignored, then SIGKILL.
    script = "trap '' HUP; echo ready; read line; echo got $line; exec sleep 60"
    with anyio.CancelScope() as leave:
        async with aioproc.open_process(["sh", "-c", script], pty=True, grace=0.01) as child:
            await aioproc.expect(child.stdout, b"ready", timeout=30)  # type: ignore[arg-type]
            await child.stdin.send(b"hi\n")  # type: ignore[union-attr]
            await aioproc.expect(child.stdout, b"got hi", timeout=30)  # type: ignore[arg-type]
            leave.cancel()
            await anyio.lowlevel.checkpoint()
    assert child.returncode == -signal.SIGKILL


async def test_cancellation_sweep_over_talking_and_the_stop_sequence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sweep = Sweep()
    sweep.install(monkeypatch)
    swept = await sweep.run(talk_then_stop)
    assert swept > 5


async def test_aclose_cancelled_stops_the_child() -> None:
    child = await aioproc.open_process(["sh", "-c", "exec sleep 60"], pty=True, grace=0.05)
    with anyio.move_on_after(0.1):
        await child.aclose()
    assert child.returncode == -signal.SIGHUP


# -- bad input -------------------------------------------------------------------------------


async def test_bad_pty_options() -> None:
    with pytest.raises(
        TypeError, match=r"pty must be True, False or an aioproc\.Pty, not str: 'yes'"
    ):
        await aioproc.run_process(["true"], pty="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rows must be between 1 and 65535, not 0"):
        aioproc.Pty(rows=0)
    with pytest.raises(TypeError, match="cols must be an int, not str"):
        aioproc.Pty(cols="80")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Pty echo must be True or False, not 1"):
        aioproc.Pty(echo=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Pty term must be a non-empty str"):
        aioproc.Pty(term="")
    with pytest.raises(
        ValueError, match=r"stdout is the terminal: leave it out \(or PIPE\), not stdout=DEVNULL"
    ):
        await aioproc.run_process(["true"], pty=True, stdout=subprocess.DEVNULL)
    with pytest.raises(ValueError, match="not stderr=STDOUT"):
        await aioproc.run_process(["true"], pty=True, stderr=subprocess.STDOUT)
    with pytest.raises(ValueError, match="not stdin=7"):
        await aioproc.run_process(["true"], pty=True, stdin=7)
    with pytest.raises(ValueError, match="process_group=5 cannot be given"):
        await aioproc.run_process(["true"], pty=True, process_group=5)
    with pytest.raises(FileNotFoundError, match="no-such-program"):
        await aioproc.run_process(["no-such-program"], pty=True)
    with pytest.raises(FileNotFoundError, match="no-such-program"):
        await aioproc.run_process(["no-such-program"], pty=True, cwd="/")


async def test_pty_needs_the_native_engine() -> None:
    with pytest.raises(ValueError, match="pty= needs the native engine, not engine='asyncio'"):
        await aioproc.run_process(["true"], pty=True, engine="asyncio")


async def test_bad_resize() -> None:
    async with aioproc.open_process(["cat"], pty=True) as child:
        assert child.pty is not None
        with pytest.raises(ValueError, match="cols must be between 1 and 65535, not 70000"):
            child.pty.resize(24, 70000)
        with pytest.raises(TypeError, match="rows must be an int, not float"):
            child.pty.resize(2.5, 80)  # type: ignore[arg-type]


async def test_a_shell_command_runs_through_sh() -> None:
    result = await aioproc.run_process("echo $((6 * 7))", pty=True)
    assert result.stdout == b"42\r\n"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_native_asyncio_cancel_twice_during_the_stop_sequence() -> None:
    import asyncio

    started = asyncio.Event()
    children: list[aioproc.Process] = []
    script = "trap '' HUP; echo ready; exec sleep 60"

    async def body() -> None:
        async with aioproc.open_process(["sh", "-c", script], pty=True, grace=0.2) as child:
            children.append(child)
            await aioproc.expect(child.stdout, b"ready", timeout=30)  # type: ignore[arg-type]
            started.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(body())
    await started.wait()
    task.cancel()
    await asyncio.sleep(0.05)  # in the stop sequence by now, or not: the outcome is the same
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert children[0].returncode == -signal.SIGKILL
