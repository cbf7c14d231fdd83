"""Pipelines: kernel pipes between stages, bash's statuses, one stop for the whole group."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import shlex
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import anyio
import pytest

import aioproc
from aioproc import DEVNULL, PIPE, Pipeline, Stage

from .cancel_sweep import Sweep
from .helpers import py

# A stage that reports each SIGTERM on stdout and otherwise ignores it.
STUBBORN = py(
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: print('TERM', flush=True))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)

# One that ignores SIGTERM silently (its stdout may be gone by then).
DEAF = py(
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)

O_NONBLOCK = os.O_NONBLOCK


def _sh(code: str) -> list[str]:
    return ["sh", "-c", code]


# Each case is run by bash and by aioproc.pipeline, with pipefail on and off; the
# statuses ($? and PIPESTATUS) and the output must be the same. Only the last
# stage writes where a race could change who gets SIGPIPE.
CASES: dict[str, list[list[str]]] = {
    "all succeed": [["true"], ["true"], ["true"]],
    "a lone failing stage": [_sh("exit 9")],
    "first fails": [["false"], ["cat"]],
    "last fails": [["true"], _sh("exit 4")],
    "middle fails": [["true"], _sh("exit 3"), ["cat"]],
    "two fail, the rightmost counts": [_sh("exit 7"), _sh("exit 5"), ["cat"]],
    "failure then success": [["false"], ["true"], ["true"]],
    "yes | head -1": [["yes"], ["head", "-1"]],
    "SIGPIPE upstream of a success": [["yes"], ["head", "-1"], ["cat"]],
    "SIGPIPE upstream of a failure": [["yes"], _sh("head -1; exit 2")],
    "first stage killed by a signal": [_sh("kill -TERM $$"), ["cat"]],
    "middle stage killed by a signal": [["true"], _sh("kill -INT $$"), ["cat"]],
    "last stage killed by a signal": [["true"], _sh("kill -KILL $$")],
    "output through three stages": [["printf", "b\\na\\nc\\n"], ["sort"], ["tr", "a-z", "A-Z"]],
}


def _bash_status(code: int) -> int:
    """Our return code (``-N``: killed by signal N) as bash reports it."""
    return 128 - code if code < 0 else code


@pytest.mark.parametrize("pipefail", [True, False], ids=["pipefail", "no-pipefail"])
@pytest.mark.parametrize("case", list(CASES))
async def test_statuses_are_those_of_bash(case: str, pipefail: bool) -> None:
    stages = CASES[case]
    line = " | ".join(shlex.join(stage) for stage in stages)
    script = (
        f"set {'-' if pipefail else '+'}o pipefail; exec 3>&2 2>/dev/null\n"
        f'{line}\necho "$? ${{PIPESTATUS[*]}}" >&3\n'
    )
    bash = await aioproc.run_process(["bash", "-c", script], check=False)
    bash_status, *bash_statuses = map(int, bash.stderr.split())

    result = await aioproc.run_pipeline(*stages, stderr=DEVNULL, pipefail=pipefail, check=False)
    assert [_bash_status(code) for code in result.returncodes] == bash_statuses
    assert _bash_status(result.returncode) == bash_status
    assert result.stdout == bash.stdout


async def test_yes_head_ends_with_yes_killed_by_sigpipe() -> None:
    with anyio.fail_after(30):
        async with aioproc.pipeline(["yes"], ["head", "-1"], stdin=DEVNULL) as p:
            assert p.stdout is not None
            assert await p.stdout.read_all() == b"y\n"
            assert await p.wait() == -signal.SIGPIPE
    assert p.returncodes == [-signal.SIGPIPE, 0]
    assert p.stderr is not None
    # no "Broken pipe" complaint: yes died of the signal instead of seeing EPIPE


async def test_yes_head_with_pipefail_off_is_the_last_status() -> None:
    result = await aioproc.run_pipeline(["yes"], ["head", "-1"], pipefail=False)
    assert result.returncode == 0
    assert result.returncodes == [-signal.SIGPIPE, 0]
    assert result.stderrs == [b"", b""]
    assert result.stdout == b"y\n"


def _flags(pid: int, fd: int) -> int:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError(f"no flags for fd {fd} of {pid}")


def _links(pid: int | str) -> dict[int, str]:
    links = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            links[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return links


async def test_the_inner_pipes_are_blocking_private_and_not_ours() -> None:
    async with aioproc.pipeline(["cat"], ["cat"], ["cat"], stderr=DEVNULL) as p:
        assert p.stdin is not None
        assert p.stdout is not None
        await p.stdin.send(b"hello\n")  # our ends are non-blocking now
        assert await p.stdout.receive() == b"hello\n"
        inner = set()
        for pid in p.pids:
            links = _links(pid)
            # each stage holds its stdio and nothing else: no other stage's pipe
            assert sorted(links) == [0, 1, 2], links
            for fd in (0, 1):
                assert not _flags(pid, fd) & O_NONBLOCK, f"fd {fd} of {pid} is non-blocking"
            inner |= {links[0], links[1]}
        inner -= {_links(p.pids[0])[0], _links(p.pids[-1])[1]}
        assert len(inner) == 2
        # the parent closed its copies of both inner pipes
        assert inner.isdisjoint(_links("self").values())
        assert os.getpgid(p.pids[1]) == os.getpgid(p.pids[2]) == p.pids[0] == p.pgid


async def test_a_nonblocking_stream_handed_over_reaches_cat_blocking() -> None:
    # trio#1707: the stdout of one process, read from (so non-blocking on our
    # side), becomes the stdin of the next; cat must not fail with EAGAIN.
    async with aioproc.open_process(["yes"], stdin=DEVNULL) as source:
        assert source.stdout is not None
        assert await source.stdout.receive(2) == b"y\n"
        async with aioproc.pipeline(
            ["cat"], ["head", "-c", "1000000"], stdin=source.stdout, stderr=PIPE
        ) as p:
            assert source.stdout.closed  # the pipeline took it over
            assert p.stdout is not None
            assert p.stderr is not None
            data = await p.stdout.read_all()
            errors = await p.stderr.read_all()
            await p.wait()
        assert len(data) == 1_000_000
        assert errors == b""
        assert p.returncodes == [-signal.SIGPIPE, 0]
        assert await source.wait() == -signal.SIGPIPE


async def test_the_group_leader_stays_a_zombie_until_the_pipeline_is_let_go() -> None:
    async with aioproc.pipeline(["true"], ["sleep", "60"], stdin=DEVNULL) as p:
        await p.stages[0].wait()
        with open(f"/proc/{p.pids[0]}/stat") as f:
            stat = f.read()
        assert stat[stat.rindex(")") + 2] == "Z"
        assert os.getpgid(p.pids[1]) == p.pids[0]
        p.terminate()  # the group, through the zombie's pid
        assert await p.wait() == -signal.SIGTERM
    assert p.returncodes == [0, -signal.SIGTERM]
    assert not os.path.exists(f"/proc/{p.pids[0]}")  # reaped on the way out


async def test_a_stage_that_ignores_sigterm_is_killed_after_grace() -> None:
    with anyio.CancelScope() as scope:
        async with aioproc.pipeline(["sleep", "60"], DEAF, ["cat"], grace=0.3) as p:
            assert p.stdout is not None
            assert await anext(p.stdout.lines()) == b"ready\n"
            scope.cancel()
            await anyio.sleep(60)
    assert scope.cancelled_caught
    assert p.returncodes == [-signal.SIGTERM, -signal.SIGKILL, -signal.SIGTERM]
    with pytest.raises(anyio.ClosedResourceError):
        await p.stdout.receive()


async def test_an_error_in_the_block_stops_every_stage() -> None:
    with pytest.raises(KeyError):
        async with aioproc.pipeline(["yes"], ["cat"], ["sleep", "60"], stdin=DEVNULL) as p:
            raise KeyError
    assert p.returncodes == [-signal.SIGTERM] * 3
    assert p.returncode == -signal.SIGTERM


async def test_a_native_second_cancellation_does_not_cut_the_stop_short(
    anyio_backend_name: str,
) -> None:
    holder: list[Pipeline] = []
    ready = anyio.Event()

    async def victim() -> None:
        async with aioproc.pipeline(["sleep", "60"], STUBBORN, grace=0.5, stderr=DEVNULL) as p:
            holder.append(p)
            assert p.stdout is not None
            assert await anext(p.stdout.lines()) == b"ready\n"
            ready.set()
            await anyio.sleep(60)

    if anyio_backend_name == "asyncio":
        task = asyncio.ensure_future(victim())
        await ready.wait()
        task.cancel()
        stdout = holder[0].stdout
        assert stdout is not None
        assert await anext(stdout.lines()) == b"TERM\n"  # the stop is in its grace
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        with anyio.CancelScope() as outer:
            with anyio.CancelScope() as inner:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(victim)
                    await ready.wait()
                    inner.cancel()
                    outer.cancel()
    assert holder[0].returncodes == [-signal.SIGTERM, -signal.SIGKILL]


@pytest.mark.parametrize("where", [0, 1, 2])
async def test_a_missing_program_stops_the_stages_started(where: int) -> None:
    stages: list[list[str]] = [["yes"], ["cat"], ["cat"]]
    stages[where] = ["no-such-program-xyz"]
    with pytest.raises(FileNotFoundError, match=rf"stage {where} of the pipeline") as caught:
        await aioproc.pipeline(*stages, stdin=DEVNULL)
    assert caught.value.filename == "no-such-program-xyz"
    # the autouse leak check: the stages before it were stopped and reaped, no fd is left


async def test_a_stream_with_bytes_read_ahead_is_refused() -> None:
    async with aioproc.open_process(["printf", "a\nb\nc\n"], stdin=DEVNULL) as source:
        assert source.stdout is not None
        assert await anext(source.stdout.lines()) == b"a\n"  # b and c are read ahead
        with pytest.raises(ValueError, match="bytes already read from it"):
            await aioproc.pipeline(["cat"], stdin=source.stdout)
        assert await source.stdout.read_all() == b"b\nc\n"


async def test_a_missing_program_through_run_pipeline() -> None:
    with pytest.raises(FileNotFoundError, match="no-such-program-xyz"):
        await aioproc.run_pipeline(["echo", "x"], ["cat"], ["no-such-program-xyz"])


async def test_run_pipeline_names_the_failing_stage_with_its_stderr() -> None:
    stages = (["echo", "x"], _sh("cat; echo 'bad thing' >&2; exit 3"), _sh("cat; echo warn >&2"))
    with pytest.raises(aioproc.PipelineError) as caught:
        await aioproc.run_pipeline(*stages)
    error = caught.value
    assert isinstance(error, subprocess.CalledProcessError)
    assert error.stage == 1
    assert error.returncode == 3
    assert error.cmd == stages[1]
    assert error.stderr == b"bad thing\n"
    assert error.stderrs == [b"", b"bad thing\n", b"warn\n"]
    assert error.returncodes == [0, 3, 0]
    assert error.output == b"x\n"
    assert "stage 1 of the pipeline" in str(error)
    assert "bad thing" in str(error)


async def test_run_pipeline_with_a_signal_names_it() -> None:
    with pytest.raises(aioproc.PipelineError, match="killed by SIGPIPE") as caught:
        await aioproc.run_pipeline(["yes"], ["head", "-1"])
    assert caught.value.stage == 0


async def test_run_pipeline_feeds_input_and_captures() -> None:
    data = os.urandom(300_000)
    result = await aioproc.run_pipeline(["cat"], ["cat"], ["wc", "-c"], input=data)
    assert result.stdout == b"%d\n" % len(data)
    assert result.returncode == 0
    assert result.returncodes == [0, 0, 0]
    assert len(result.pids) == 3
    assert result.stderr == b""


async def test_stderr_merged_and_per_stage() -> None:
    async with aioproc.pipeline(
        _sh("echo one >&2"),
        Stage(_sh("cat; echo two >&2"), stderr=PIPE),
        _sh("cat; echo three >&2"),
        stdin=DEVNULL,
        stdout=DEVNULL,
    ) as p:
        assert p.stderr is not None
        own = p.stages[1].stderr
        assert own is not None
        merged = await p.stderr.read_all()
        assert await own.read_all() == b"two\n"
        assert await p.wait() == 0
    assert sorted(merged.splitlines()) == [b"one", b"three"]
    assert p.stages[0].stderr is None


async def test_stage_options(tmp_path: Path) -> None:
    result = await aioproc.run_pipeline(
        Stage(["pwd"], cwd=tmp_path),
        Stage(_sh('cat; echo "$MARK"'), env={"MARK": "marked", "PATH": os.environ["PATH"]}),
    )
    assert result.stdout == f"{tmp_path}\nmarked\n".encode()


async def test_shell_strings_are_stages() -> None:
    result = await aioproc.run_pipeline("printf 'a b\\n'", "tr ' ' '\\n'", "wc -l")
    assert result.stdout.strip() == b"2"


async def test_timeout_stops_and_reaps_and_keeps_what_was_read() -> None:
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        await aioproc.run_pipeline(
            _sh("echo early; echo oops >&2; exec sleep 60"), ["cat"], timeout=0.5
        )
    # what each stage wrote before the timeout may or may not have been read by then
    assert caught.value.output in (b"", b"early\n")
    assert caught.value.stderr in (b"", b"oops\n")


async def test_a_process_stdin_handed_over_as_stdout() -> None:
    async with aioproc.open_process(["tr", "a-z", "A-Z"], stderr=DEVNULL) as upper:
        assert upper.stdin is not None
        assert upper.stdout is not None
        result = await aioproc.run_pipeline(["echo", "hi"], ["cat"], stdout=upper.stdin)
        assert upper.stdin.closed
        assert result.stdout is None
        assert await upper.stdout.read_all() == b"HI\n"


async def test_a_stage_with_stderr_to_stdout() -> None:
    result = await aioproc.run_pipeline(
        Stage(_sh("echo out; echo err >&2"), stderr=subprocess.STDOUT), ["sort"]
    )
    assert result.stdout == b"err\nout\n"
    assert result.stderrs == [None, b""]


async def test_await_then_aclose() -> None:
    p = await aioproc.pipeline(["echo", "hi"], ["cat"], stdin=DEVNULL, stderr=DEVNULL)
    assert p.stdout is not None
    assert await p.stdout.read_all() == b"hi\n"
    await p.aclose()
    assert p.returncode == 0


async def test_cancelled_aclose_stops_every_stage() -> None:
    p = await aioproc.pipeline(["sleep", "60"], ["sleep", "60"], stdin=DEVNULL, stderr=DEVNULL)
    with anyio.move_on_after(0.2) as scope:
        await p.aclose()
    assert scope.cancelled_caught
    assert p.returncodes == [-signal.SIGTERM, -signal.SIGTERM]


@pytest.mark.parametrize(
    ("commands", "options", "error", "match"),
    [
        ((), {}, ValueError, "at least one command"),
        ((["cat"], []), {}, ValueError, "stage 1 of the pipeline: command is empty"),
        ((["cat"], ["cat", 3]), {}, TypeError, "stage 1 of the pipeline: command argument 1"),
        ((["cat"], 42), {}, TypeError, "stage 1 of the pipeline: command must be"),
        ((["cat"],), {"pipefail": "yes"}, TypeError, "pipefail must be True or False"),
        ((["cat"],), {"stdin": subprocess.STDOUT}, ValueError, "stdin=STDOUT"),
        ((["cat"],), {"stdout": -7}, ValueError, "stdout=-7"),
        ((["cat"],), {"stderr": "x"}, TypeError, "stderr must be"),
        ((["cat"],), {"grace": -1}, ValueError, "grace"),
        ((["cat"], ["cat"]), {"env": {"A": 1}}, TypeError, r"stage 0 of the pipeline: env\['A'\]"),
    ],
)
async def test_bad_input(
    commands: tuple[object, ...], options: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await aioproc.pipeline(*commands, **options)  # type: ignore[arg-type]


async def test_a_stream_the_wrong_way_round_is_refused() -> None:
    async with aioproc.open_process(["cat"]) as cat:
        with pytest.raises(TypeError, match="stdin takes the stdout stream"):
            await aioproc.pipeline(["cat"], stdin=cat.stdin)  # type: ignore[arg-type]


LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n"
GIB = 1 << 30


@functools.cache
def _expected_sha256() -> str:
    block = LINE * ((1 << 20) // len(LINE))
    digest = hashlib.sha256()
    left = GIB
    while left >= len(block):
        digest.update(block)
        left -= len(block)
    digest.update(block[:left])
    return digest.hexdigest()


async def test_one_gib_through_three_stages_byte_exact() -> None:
    digest = hashlib.sha256()
    size = 0
    async with aioproc.pipeline(
        ["yes", LINE[:-1].decode()], ["head", "-c", str(GIB)], ["cat"], ["cat"], stdin=DEVNULL
    ) as p:
        assert p.stdout is not None
        async for chunk in p.stdout:
            digest.update(chunk)
            size += len(chunk)
        await p.wait()
    assert p.returncodes == [-signal.SIGPIPE, 0, 0, 0]
    assert size == GIB
    assert digest.hexdigest() == _expected_sha256()


STRACE_SCRIPT = """
import os, sys, anyio, aioproc

async def main():
    async with aioproc.pipeline(
        ["head", "-c", str(64 << 20), "/dev/zero"], ["cat"], ["cat"],
        stdin=aioproc.DEVNULL, stderr=aioproc.DEVNULL,
    ) as p:
        links = [os.readlink(f"/proc/{p.pids[1]}/fd/{fd}") for fd in (0, 1)]
        size = 0
        async for chunk in p.stdout:
            size += len(chunk)
        await p.wait()
    print(size, *links)

backend, options = sys.argv[1], {}
if backend == "uvloop":
    import uvloop
    backend, options = "asyncio", {"loop_factory": uvloop.new_event_loop}
anyio.run(main, backend=backend, backend_options=options)
"""

IO_CALLS = (
    "read,write,readv,writev,pread64,pwrite64,preadv,pwritev,splice,tee,sendfile,copy_file_range"
)


async def test_the_parent_never_reads_or_writes_the_inner_pipes(
    anyio_backend: object, tmp_path: Path
) -> None:
    backend = "uvloop" if isinstance(anyio_backend, tuple) else str(anyio_backend)
    script = tmp_path / "script.py"
    script.write_text(STRACE_SCRIPT)
    trace = tmp_path / "trace"
    # Without -f: only the parent's main thread, where every backend does its I/O.
    command = ["strace", "-o", str(trace), "-y", "-e", f"trace={IO_CALLS}"]
    result = await aioproc.run_process([*command, sys.executable, str(script), backend])
    size, *inner = result.stdout.decode().split()
    assert int(size) == 64 << 20
    assert len(inner) == 2
    assert all(link.startswith("pipe:[") for link in inner)
    assert inner[0] != inner[1]
    lines = trace.read_text().splitlines()
    # strace -y names each fd after its number: "read(5<pipe:[1234]>, ..."
    touched = [line for line in lines if any(f"<{link}>" in line for link in inner)]
    assert touched == []
    # and the trace does see the parent read the last stage's output
    assert sum(line.startswith("read(") and "<pipe:[" in line for line in lines) > 10


async def _through_three_cats() -> None:
    data = os.urandom(100_000)
    result = await aioproc.run_pipeline(["cat"], ["cat"], ["cat"], input=data)
    assert result.stdout == data


async def _talk_through_a_pipeline() -> None:
    async with aioproc.pipeline(["cat"], ["cat"], stderr=DEVNULL) as p:
        assert p.stdin is not None
        assert p.stdout is not None
        for n in range(3):
            await p.stdin.send(b"%d\n" % n)
            assert await anext(p.stdout.lines()) == b"%d\n" % n
        await p.stdin.aclose()
        assert await p.stdout.read_all() == b""


async def _stop_a_stubborn_stage() -> None:
    with anyio.CancelScope() as scope:
        async with aioproc.pipeline(["cat"], DEAF, ["cat"], grace=0.05, stderr=DEVNULL) as p:
            assert p.stdout is not None
            assert await anext(p.stdout.lines()) == b"ready\n"
            scope.cancel()
            await anyio.sleep(60)


@pytest.mark.parametrize(
    "scenario", [_through_three_cats, _talk_through_a_pipeline, _stop_a_stubborn_stage]
)
async def test_cancel_at_every_await(
    anyio_backend: object, monkeypatch: pytest.MonkeyPatch, scenario: object
) -> None:
    sweep = Sweep()
    sweep.install(monkeypatch)
    swept = await sweep.run(scenario)  # type: ignore[arg-type]
    assert swept > 0


def test_inner_pipe_ends_held_at_a_fork_are_closed_in_the_child() -> None:
    # A fork from another thread while a pipeline starts must not keep its inner
    # pipes: a write end held by that child would hold EOF back from a stage.
    from aioproc._pipeline._pipeline import _close_all, _pipe

    held: list[int] = []
    read_fd, write_fd = _pipe(held)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, use of fork()"
            pid = os.fork()
        if pid == 0:
            still_open = 0
            for fd in (read_fd, write_fd):
                with contextlib.suppress(OSError):
                    os.fstat(fd)
                    still_open += 1
            os._exit(still_open)
        _, status = os.waitpid(pid, 0)
    finally:
        _close_all(held)
    assert os.waitstatus_to_exitcode(status) == 0
