"""Bytes go through a child intact, whatever the sizes of writes and reads.

Random payloads (0 to 64 MiB in soak mode, 0 to 4 MiB otherwise) go through
``cat`` with random write and read chunk sizes, and through a forked echo over
the fork channel, and their sha256 must match.
Then 256 MiB (64 MiB outside soak mode) go in while as much comes out, with
no deadlock. ``BYTES_PUSHED`` counts what went through, for the report.
"""

from __future__ import annotations

import hashlib
import os
import random

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aioproc

from .helpers import echo_over_the_channel, soak

MAX_SIZE = (64 if soak() else 4) << 20
BIDIRECTIONAL = (256 if soak() else 64) << 20
BYTES_PUSHED = {"total": 0}


def _payload(size: int, seed: int) -> bytes:
    # random.randbytes is fast and reproducible from the seed hypothesis picked.
    return random.Random(seed).randbytes(size)


async def _through_cat(engine: str, data: bytes, write_chunk: int, read_chunk: int) -> bytes:
    async with aioproc.open_process(["cat"], engine=engine) as cat:  # type: ignore[arg-type]
        assert cat.stdin is not None
        assert cat.stdout is not None
        stdin, stdout = cat.stdin, cat.stdout
        digest = hashlib.sha256()

        async def feed() -> None:
            view = memoryview(data)
            for start in range(0, len(view), write_chunk):
                await stdin.send(view[start : start + write_chunk])
            await stdin.aclose()

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            while True:
                try:
                    digest.update(await stdout.receive(read_chunk))
                except anyio.EndOfStream:
                    break
        assert await cat.wait() == 0
    BYTES_PUSHED["total"] += 2 * len(data)
    return digest.digest()


@settings(
    max_examples=40 if soak() else 6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    size=st.one_of(st.sampled_from([0, 1, 65535, 65536, 65537]), st.integers(0, MAX_SIZE)),
    seed=st.integers(0, 2**32),
    write_chunk=st.integers(1, 1 << 20),
    read_chunk=st.integers(1, 1 << 20),
)
async def test_random_payloads_through_cat(
    engine: str, size: int, seed: int, write_chunk: int, read_chunk: int
) -> None:
    data = _payload(size, seed)
    # Chunks are kept to at most 2,000 writes and 100,000 reads a payload: one-byte
    # reads of 64 MiB take minutes (about a microsecond each), and prove nothing
    # that one-byte reads of a smaller payload do not.
    write_chunk = max(write_chunk, size // 2_000 or 1)
    read_chunk = max(read_chunk, size // 100_000 or 1)
    digest = await _through_cat(engine, data, write_chunk, read_chunk)
    assert digest == hashlib.sha256(data).digest()


async def test_both_directions_at_once(engine: str) -> None:
    """A child that reads and writes at the same time: we must do both, or it stalls."""
    data = os.urandom(1 << 20) * (BIDIRECTIONAL >> 20)
    digest = await _through_cat(engine, data, 1 << 20, 1 << 20)
    assert digest == hashlib.sha256(data).digest()


async def test_run_process_round_trip(engine: str) -> None:
    data = os.urandom(8 << 20)
    result = await aioproc.run_process(["cat"], input=data, engine=engine)  # type: ignore[arg-type]
    BYTES_PUSHED["total"] += 2 * len(data)
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


@settings(
    max_examples=20 if soak() else 4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    sizes=st.lists(st.integers(0, MAX_SIZE // 4), min_size=1, max_size=8),
    seed=st.integers(0, 2**32),
)
async def test_random_messages_through_a_forked_echo(
    anyio_backend: object, sizes: list[int], seed: int
) -> None:
    """The channel both ways: each message comes back whole and in order."""
    async with aioproc.fork(echo_over_the_channel, on_threads="allow") as child:
        for index, size in enumerate(sizes):
            data = _payload(size, seed + index)
            await child.channel.send(data)
            echoed = await child.channel.receive()
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
            BYTES_PUSHED["total"] += 2 * size
        await child.channel.send_eof()
        assert await child.result() == len(sizes)


@pytest.fixture(scope="module", autouse=True)
def _report_bytes() -> object:
    yield
    print(f"\nbytes pushed through children: {BYTES_PUSHED['total']:,}")
