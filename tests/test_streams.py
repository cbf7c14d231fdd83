"""The pipes as anyio byte streams: anyio's semantics, plus lines and read-to-EOF."""

from __future__ import annotations

import fcntl
import subprocess

import anyio
import pytest
from anyio import BrokenResourceError, BusyResourceError, ClosedResourceError, EndOfStream
from anyio.abc import ByteReceiveStream, ByteSendStream

import aioproc

from .helpers import py


async def test_streams_are_anyio_byte_streams(engine: str) -> None:
    async with aioproc.open_process(["cat"], engine=engine) as cat:
        assert isinstance(cat.stdin, ByteSendStream)
        assert isinstance(cat.stdin, aioproc.PipeSendStream)
        assert isinstance(cat.stdout, ByteReceiveStream)
        assert isinstance(cat.stdout, aioproc.PipeReceiveStream)
        assert isinstance(cat.stderr, aioproc.PipeReceiveStream)


async def test_receive_then_end_of_stream(engine: str) -> None:
    async with aioproc.open_process(["printf", "abc"], engine=engine) as process:
        assert process.stdout is not None
        assert await process.stdout.receive() == b"abc"
        with pytest.raises(EndOfStream):
            await process.stdout.receive()
        with pytest.raises(EndOfStream):
            await process.stdout.receive()


async def test_receive_respects_max_bytes(engine: str) -> None:
    async with aioproc.open_process(["printf", "abcdef"], engine=engine) as process:
        assert process.stdout is not None
        chunks = []
        while True:
            try:
                chunk = await process.stdout.receive(4)
            except EndOfStream:
                break
            assert 0 < len(chunk) <= 4
            chunks.append(chunk)
        assert b"".join(chunks) == b"abcdef"


@pytest.mark.parametrize("max_bytes", [0, -1])
async def test_receive_rejects_nonpositive_max_bytes(engine: str, max_bytes: int) -> None:
    async with aioproc.open_process(["true"], engine=engine) as process:
        assert process.stdout is not None
        with pytest.raises(ValueError, match="max_bytes"):
            await process.stdout.receive(max_bytes)


async def test_receive_after_close(engine: str) -> None:
    async with aioproc.open_process(["printf", "abc"], engine=engine) as process:
        assert process.stdout is not None
        await process.stdout.aclose()
        with pytest.raises(ClosedResourceError):
            await process.stdout.receive()
        await process.stdout.aclose()  # twice is fine


async def test_close_wakes_a_blocked_reader(engine: str) -> None:
    async with aioproc.open_process(["sleep", "30"], engine=engine) as process:
        assert process.stdout is not None
        stdout = process.stdout

        async def reader() -> None:
            with pytest.raises(ClosedResourceError):
                await stdout.receive()

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await anyio.sleep(0.05)
            await stdout.aclose()
        process.kill()


async def test_two_readers_at_once_is_busy(anyio_backend: object) -> None:
    # The native engine's own check; asyncio's StreamReader has its own.
    async with aioproc.open_process(["sleep", "30"]) as process:
        assert process.stdout is not None
        stdout = process.stdout
        async with anyio.create_task_group() as tg:
            tg.start_soon(stdout.receive)
            await anyio.sleep(0.05)
            with pytest.raises(BusyResourceError):
                await stdout.receive()
            tg.cancel_scope.cancel()
        process.kill()


async def test_async_iteration_yields_chunks(engine: str) -> None:
    async with aioproc.open_process(
        py("import sys\nfor i in range(100): sys.stdout.write('x' * 1000)"), engine=engine
    ) as process:
        assert process.stdout is not None
        total = b"".join([chunk async for chunk in process.stdout])
    assert total == b"x" * 100_000


async def test_lines(engine: str) -> None:
    async with aioproc.open_process(["printf", "one\ntwo\n\nlast"], engine=engine) as process:
        assert process.stdout is not None
        lines = [line async for line in process.stdout.lines()]
    assert lines == [b"one\n", b"two\n", b"\n", b"last"]


async def test_long_lines_and_many_lines(engine: str) -> None:
    code = "import sys\nsys.stdout.write('y' * 300000 + '\\n')\nfor i in range(5000): print(i)"
    async with aioproc.open_process(py(code), engine=engine) as process:
        assert process.stdout is not None
        lines = [line async for line in process.stdout.lines()]
    assert lines[0] == b"y" * 300000 + b"\n"
    assert lines[1:] == [f"{i}\n".encode() for i in range(5000)]


async def test_breaking_out_of_lines_loses_nothing(engine: str) -> None:
    async with aioproc.open_process(["printf", "a\nb\nc\nrest"], engine=engine) as process:
        assert process.stdout is not None
        async for line in process.stdout.lines():
            assert line == b"a\n"
            break
        assert await anext(process.stdout.lines()) == b"b\n"
        assert await process.stdout.receive(1) == b"c"
        assert await process.stdout.read_all() == b"\nrest"


async def test_read_all(engine: str) -> None:
    async with aioproc.open_process(py("print('x' * 1_000_000)"), engine=engine) as process:
        assert process.stdout is not None
        assert await process.stdout.read_all() == b"x" * 1_000_000 + b"\n"
        assert await process.stdout.read_all() == b""


async def test_cancelled_read_all_keeps_what_it_read(engine: str) -> None:
    async with aioproc.open_process(
        ["sh", "-c", "printf first; sleep 30"], process_group=0, engine=engine
    ) as process:
        assert process.stdout is not None
        with anyio.move_on_after(0.3):
            await process.stdout.read_all()
        assert await process.stdout.receive() == b"first"
        process.kill(group=True)


async def test_send_then_close_sends_eof(engine: str) -> None:
    async with aioproc.open_process(["wc", "-c"], engine=engine) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        await process.stdin.send(b"12345")
        await process.stdin.send(b"")
        await process.stdin.aclose()
        assert (await process.stdout.read_all()).strip() == b"5"


async def test_send_accepts_bytes_like(engine: str) -> None:
    async with aioproc.open_process(["cat"], engine=engine) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        await process.stdin.send(bytearray(b"ab"))
        await process.stdin.send(memoryview(b"cd"))
        await process.stdin.aclose()
        assert await process.stdout.read_all() == b"abcd"


async def test_send_after_child_closed_stdin_is_broken(engine: str) -> None:
    async with aioproc.open_process(["true"], stdout=subprocess.DEVNULL, engine=engine) as process:
        assert process.stdin is not None
        await process.wait()
        with pytest.raises(BrokenResourceError):
            for _ in range(100):  # asyncio may only notice on a later write
                await process.stdin.send(b"x" * 65536)


async def test_send_after_close(engine: str) -> None:
    async with aioproc.open_process(["cat"], engine=engine) as process:
        assert process.stdin is not None
        await process.stdin.aclose()
        with pytest.raises(ClosedResourceError):
            await process.stdin.send(b"late")


async def test_large_write_while_child_reads_slowly(engine: str) -> None:
    code = "import sys, time\nn = 0\nfor chunk in iter(lambda: sys.stdin.buffer.read(65536), b''):\n    n += len(chunk)\n    time.sleep(0.001)\nprint(n)"
    async with aioproc.open_process(py(code), engine=engine) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        await process.stdin.send(b"z" * (4 << 20))
        await process.stdin.aclose()
        assert await process.stdout.read_all() == f"{4 << 20}\n".encode()


async def test_a_busy_reader_lets_other_tasks_run(engine: str) -> None:
    """Even when data is always there, reading yields to the loop now and then."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0)

    async with aioproc.open_process(
        py("import os\nb = bytes(65536)\nfor _ in range(2000): os.write(1, b)"), engine=engine
    ) as process:
        assert process.stdout is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await anyio.sleep(0.2)  # let the pipe fill
            ticks = 0
            total = 0
            async for chunk in process.stdout:
                total += len(chunk)
            tg.cancel_scope.cancel()
    assert total == 2000 * 65536
    assert ticks > 0


async def test_communicate(engine: str) -> None:
    code = "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data.upper()); sys.stderr.write('done')"
    async with aioproc.open_process(py(code), engine=engine) as process:
        assert await process.communicate(b"hello " * 100_000) == (b"HELLO " * 100_000, b"done")
        assert process.returncode == 0


async def test_communicate_without_input_closes_stdin(engine: str) -> None:
    async with aioproc.open_process(["cat"], engine=engine) as process:
        assert await process.communicate() == (b"", b"")


async def test_communicate_with_unpiped_streams(engine: str) -> None:
    async with aioproc.open_process(
        ["echo", "hi"], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, engine=engine
    ) as process:
        assert await process.communicate() == (b"hi\n", None)
        with pytest.raises(ValueError, match="stdin is not a pipe"):
            await process.communicate(b"input")


async def test_cancelled_communicate_keeps_what_it_read(engine: str) -> None:
    async with aioproc.open_process(
        ["sh", "-c", "printf out; printf err >&2; sleep 30"], process_group=0, engine=engine
    ) as process:
        with anyio.move_on_after(0.5):
            await process.communicate()
        assert process.stdout is not None
        assert process.stderr is not None
        assert await process.stdout.receive() == b"out"
        assert await process.stderr.receive() == b"err"
        process.kill(group=True)


async def test_communicate_while_reading_is_busy(anyio_backend: object) -> None:
    async with aioproc.open_process(["sleep", "30"]) as process:
        assert process.stdout is not None
        stdout = process.stdout
        async with anyio.create_task_group() as tg:
            tg.start_soon(stdout.receive)
            await anyio.sleep(0.05)
            with pytest.raises(BusyResourceError):
                await process.communicate()
            tg.cancel_scope.cancel()
        process.kill()


async def test_communicate_after_close(engine: str) -> None:
    async with aioproc.open_process(["cat"], engine=engine) as process:
        assert process.stdout is not None
        await process.stdout.aclose()
        with pytest.raises(ClosedResourceError):
            await process.communicate()
        process.kill()


# A child that writes 16 MiB as fast as it can, then waits to be told to exit:
# the pipe sizes are looked at while it still runs.
BULK_WRITER = py("import os, sys\nos.write(1, bytes(16 << 20))\nsys.stdin.read()\n")


def _pipe_size(stream: object) -> int:
    return int(fcntl.fcntl(stream._fd, fcntl.F_GETPIPE_SZ))  # type: ignore[attr-defined]


async def test_bulk_output_gets_a_larger_pipe(anyio_backend: object) -> None:
    async with aioproc.open_process(BULK_WRITER) as process:
        assert process.stdout is not None
        assert process.stdin is not None
        assert _pipe_size(process.stdout) == 1 << 16
        received = 0
        while received < 16 << 20:
            received += len(await process.stdout.receive())
        assert _pipe_size(process.stdout) == 1 << 20
        assert _pipe_size(process.stderr) == 1 << 16  # nothing came out there
        await process.stdin.aclose()


async def test_bulk_output_gets_a_larger_pipe_in_communicate(anyio_backend: object) -> None:
    async with aioproc.open_process(BULK_WRITER) as process:
        assert process.stdout is not None
        assert _pipe_size(process.stdout) == 1 << 16
        output, _ = await process.communicate(b"")
        assert len(output or b"") == 16 << 20
        assert _pipe_size(process.stdout) == 1 << 20  # still open: aclose() closes it


async def test_small_output_keeps_the_default_pipe(anyio_backend: object) -> None:
    async with aioproc.open_process(["cat"]) as cat:
        assert cat.stdin is not None
        assert cat.stdout is not None
        for _ in range(20):
            await cat.stdin.send(b"x" * 1000)
            assert await cat.stdout.receive() == b"x" * 1000
        assert _pipe_size(cat.stdout) == 1 << 16


async def test_at_most_16_pipes_are_enlarged_at_once(anyio_backend: object) -> None:
    # The kernel counts enlarged pipes against the user: aioproc keeps to 16 of them.
    async def bulk() -> aioproc.Process:
        process = await aioproc.open_process(["head", "-c", str(2 << 20), "/dev/zero"])
        assert process.stdout is not None
        assert len(await process.stdout.read_all()) == 2 << 20
        return process

    processes = [await bulk() for _ in range(17)]
    try:
        sizes = [_pipe_size(process.stdout) for process in processes]
        assert sizes == [1 << 20] * 16 + [1 << 16]
        await processes.pop(0).aclose()  # frees a place
        processes.append(await bulk())
        assert _pipe_size(processes[-1].stdout) == 1 << 20
    finally:
        for process in processes:
            await process.aclose()
