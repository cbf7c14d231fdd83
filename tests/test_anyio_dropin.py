"""Code written for anyio's open_process/run_process runs unchanged on aioproc's.

Each test here is plain anyio user code, run once with ``impl`` bound to the
``anyio`` module and once bound to ``aioproc``: swapping the import is all it
takes. (anyio's own ``aclose()`` fix for full pipes needs anyio >= 4.14.1.)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from subprocess import PIPE, CalledProcessError
from types import ModuleType

import anyio
import pytest
from anyio import CancelScope, ClosedResourceError
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.text import TextReceiveStream

import aioproc


@pytest.fixture(params=["anyio", "aioproc"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return anyio if request.param == "anyio" else aioproc


REVERSE = [sys.executable, "-c", "import sys; print(sys.stdin.read()[::-1])"]


async def test_run_process_with_input(impl: ModuleType) -> None:
    for command in (REVERSE, " ".join(f"'{arg}'" for arg in REVERSE)):
        result = await impl.run_process(command, input=b"abc")
        assert result.returncode == 0
        assert result.stdout.rstrip() == b"cba"


async def test_run_process_checked(impl: ModuleType) -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(1)"
    with pytest.raises(CalledProcessError) as caught:
        await impl.run_process([sys.executable, "-c", code])
    assert caught.value.returncode == 1
    assert caught.value.stdout.rstrip() == b"out"
    assert caught.value.stderr.rstrip() == b"err"


async def test_process_is_an_anyio_process(impl: ModuleType) -> None:
    async with await impl.open_process(["true"]) as process:
        assert isinstance(process, Process)
        assert await process.wait() == 0


async def test_terminate_a_process_that_handles_it(impl: ModuleType, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(2))\n"
        "print('ready', flush=True)\n"
        "time.sleep(5)\n"
    )
    async with await impl.open_process([sys.executable, str(script)]) as process:
        assert process.stdout is not None
        buffered = BufferedByteReceiveStream(process.stdout)
        assert await buffered.receive_until(b"\n", 100) == b"ready"
        process.terminate()
        assert await process.wait() == 2


async def test_text_stream_wrapper(impl: ModuleType) -> None:
    async with await impl.open_process(["printf", "h\u00e9llo \u2713"]) as process:
        assert process.stdout is not None
        text = "".join([chunk async for chunk in TextReceiveStream(process.stdout)])
    assert text == "h\u00e9llo \u2713"


async def test_cwd_env_and_session(impl: ModuleType, tmp_path: Path) -> None:
    code = "import os; print(os.getcwd(), os.environ['FOO'], os.getsid(0) == os.getpid())"
    result = await impl.run_process(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "FOO": "bar"},
        start_new_session=True,
    )
    assert result.stdout.decode().split() == [str(tmp_path), "bar", "True"]


async def test_connect_to_files(impl: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "in").write_text("hello\n")
    code = "import sys; t = sys.stdin.read(); print(t.upper(), end=''); print(t, file=sys.stderr, end='')"
    with (
        open(tmp_path / "in", "rb") as fin,
        open(tmp_path / "out", "wb") as fout,
        open(tmp_path / "err", "wb") as ferr,
    ):
        async with await impl.open_process(
            [sys.executable, "-c", code], stdin=fin, stdout=fout, stderr=ferr
        ) as process:
            assert await process.wait() == 0
    assert (tmp_path / "out").read_text() == "HELLO\n"
    assert (tmp_path / "err").read_text() == "hello\n"


async def test_cancelled_exit_leaves_no_orphan(impl: ModuleType) -> None:
    with CancelScope() as scope:
        async with await impl.open_process(["sleep", "5"]) as process:
            scope.cancel()
    assert process.returncode is not None
    assert process.returncode != 0


async def test_streams_are_closed_after_a_cancelled_exit(
    impl: ModuleType, anyio_backend: object
) -> None:
    with CancelScope() as scope:
        async with await impl.open_process(["sleep", "5"], stdin=PIPE) as process:
            scope.cancel()
    assert process.stdin is not None
    assert process.stdout is not None
    with pytest.raises(ClosedResourceError):
        await process.stdin.send(b"foo")
    with pytest.raises(ClosedResourceError):
        await process.stdout.receive(1)


async def test_kill_and_returncode(impl: ModuleType) -> None:
    async with await impl.open_process(["sleep", "5"]) as process:
        assert process.returncode is None
        process.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL
        assert process.returncode == -signal.SIGKILL
