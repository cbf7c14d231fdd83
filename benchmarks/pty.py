"""Pseudo-terminals: output throughput, and prompt-and-answer round trips through ``expect``.

Throughput: a Python child writes ``size`` bytes (no line ends, so cooked and
raw mode carry them alike) to its terminal and exits; the parent reads the
master to the end. The reference is a blocking ``os.read(master, 65536)`` loop
on a terminal set up the same way (``os.openpty`` and ``Popen``), until EIO:
the pty's own limit. pexpect reads with ``read_nonblocking(65536)``. All
three terminals are in raw mode.

Round trips: ``sh`` prints a prompt, reads a line and answers, forever; each
round trip types a line and waits for the next prompt, with aioproc's
``expect`` and pexpect's (sync) ``expect``, both given the same regular
expression. pexpect's ``delaybeforesend`` (a 50 ms sleep before each send, by
default) is set to ``None``: it measures pexpect, not its pause. The
reference is a blocking ``os.write`` + ``os.read`` loop searching for the
prompt with the same regular expression.

The metric is a rate: MB/s (10⁶ bytes) in the throughput cases, round trips
per second in the others.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tty
from typing import Any

from ._core import AIOPROC, Case, Impl, Measurement, Metric, Mode, run_on

WRITER = """
import os, sys
size = int(sys.argv[1])
block = memoryview(b"x" * (1 << 20))
while size > 0:
    size -= os.write(1, block[: min(size, len(block))])
"""
PROMPTER = "printf '> '; while read -r line; do printf 'got %s\\n> ' \"$line\"; done"
PROMPT = re.compile(rb"> ")
LINE = b"ping\n"
WARMUP = 50
CHUNK = 65536

PEXPECT = Impl("pexpect")
LIMIT_RAW = Impl("limit: os.read/os.write on the master")
IMPLS = (
    Impl(AIOPROC, "asyncio"),
    Impl(AIOPROC, "uvloop"),
    Impl(AIOPROC, "trio"),
    PEXPECT,
    LIMIT_RAW,
)


def cases(mode: Mode) -> list[Case]:
    size = {"full": 256 << 20, "quick": 64 << 20, "smoke": 1 << 20}[mode]
    count = {"full": 5_000, "quick": 1_000, "smoke": 20}[mode]
    return [
        Case(f"throughput, {size >> 20} MiB: MB/s", {"kind": "throughput", "size": size}),
        Case(f"expect round trips, {count:,}: per s", {"kind": "expect", "count": count}),
    ]


def _writer(size: int) -> list[str]:
    return [sys.executable, "-c", WRITER, str(size)]


def _prompter() -> list[str]:
    return ["/bin/sh", "-c", PROMPTER]


# -- the reference: blocking calls on a master we made ------------------------------------


def _raw_spawn(cmd: list[str], raw: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    master, slave = os.openpty()
    if raw:
        tty.setraw(slave)
    try:
        child = subprocess.Popen(
            cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
    finally:
        os.close(slave)
    return child, master


def _raw_throughput(size: int) -> float:
    child, master = _raw_spawn(_writer(size), raw=True)
    got = 0
    start = time.perf_counter()
    try:
        while True:
            try:
                data = os.read(master, CHUNK)
            except OSError:  # EIO: the end
                break
            if not data:
                break
            got += len(data)
        elapsed = time.perf_counter() - start
    finally:
        os.close(master)
        child.wait()
    assert got == size, (got, size)
    return elapsed


def _raw_trips(count: int) -> float:
    child, master = _raw_spawn(_prompter())
    buffer = bytearray()

    def wait_prompt() -> None:
        while True:
            match = PROMPT.search(buffer)
            if match:
                del buffer[: match.end()]
                return
            buffer.extend(os.read(master, CHUNK))

    try:
        wait_prompt()
        for i in range(WARMUP + count):
            if i == WARMUP:
                start = time.perf_counter()
            os.write(master, LINE)
            wait_prompt()
        elapsed = time.perf_counter() - start
    finally:
        os.close(master)
        child.wait()
    return elapsed


# -- pexpect ---------------------------------------------------------------------------------


def _pexpect_throughput(size: int) -> float:
    import pexpect

    cmd = _writer(size)
    child = pexpect.spawn(cmd[0], cmd[1:], timeout=None)
    tty.setraw(child.child_fd)  # as the others (it may miss the first bytes: same bytes)
    got = 0
    start = time.perf_counter()
    try:
        while True:
            try:
                got += len(child.read_nonblocking(CHUNK, timeout=None))
            except pexpect.EOF:
                break
        elapsed = time.perf_counter() - start
    finally:
        child.close(force=True)
    assert got == size, (got, size)
    return elapsed


def _pexpect_trips(count: int) -> float:
    import pexpect

    cmd = _prompter()
    child = pexpect.spawn(cmd[0], cmd[1:], timeout=30)
    child.delaybeforesend = None
    try:
        child.expect(PROMPT)
        for i in range(WARMUP + count):
            if i == WARMUP:
                start = time.perf_counter()
            child.send(LINE)
            child.expect(PROMPT)
        elapsed = time.perf_counter() - start
    finally:
        child.close(force=True)
    return elapsed


# -- aioproc ---------------------------------------------------------------------------------


async def _aioproc_throughput(size: int) -> float:
    import aioproc

    async with aioproc.open_process(_writer(size), pty=aioproc.Pty(raw=True)) as process:
        stdout = process.stdout
        assert stdout is not None
        got = 0
        start = time.perf_counter()
        async for chunk in stdout:
            got += len(chunk)
        elapsed = time.perf_counter() - start
    assert got == size, (got, size)
    return elapsed


async def _aioproc_trips(count: int) -> float:
    import aioproc

    async with aioproc.open_process(_prompter(), pty=True) as process:
        stdin, stdout = process.stdin, process.stdout
        assert stdin is not None
        assert stdout is not None
        await aioproc.expect(stdout, PROMPT)
        for i in range(WARMUP + count):
            if i == WARMUP:
                start = time.perf_counter()
            await stdin.send(LINE)
            await aioproc.expect(stdout, PROMPT)
        elapsed = time.perf_counter() - start
        process.kill()
    return elapsed


def run(impl: Impl, params: dict[str, Any]) -> dict[str, float]:
    throughput = params["kind"] == "throughput"
    amount: int = params["size"] if throughput else params["count"]
    if impl == LIMIT_RAW:
        elapsed = (_raw_throughput if throughput else _raw_trips)(amount)
    elif impl == PEXPECT:
        elapsed = (_pexpect_throughput if throughput else _pexpect_trips)(amount)
    else:
        assert impl.loop is not None
        job = _aioproc_throughput if throughput else _aioproc_trips

        async def main() -> float:
            return await job(amount)

        elapsed = run_on(impl.loop, main)
    return {"rate": (amount / 1e6 if throughput else amount) / elapsed}


MEASUREMENT = Measurement(
    name="pty",
    title="Pseudo-terminals: output throughput, and expect round trips",
    impls=IMPLS,
    reference=LIMIT_RAW,
    metrics=(Metric("rate", "MB/s or round trips/s", higher_is_better=True),),
    cases=cases,
    run=run,
    notes=(
        "Throughput: every terminal in raw mode; the bytes carry no line end.",
        "pexpect with delaybeforesend=None (its default sleeps 50 ms before each send).",
    ),
    requires="Pty",
)
