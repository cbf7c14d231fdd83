"""7. Pipeline: bytes through ``head -c N /dev/zero | cat | cat > /dev/null``, in MB/s.

The same three programs, wired four ways:

* ``sh -c 'head ... | cat | cat'``: the shell's kernel pipes (reference);
* ``aioproc.pipeline``: kernel pipes made by aioproc, enlarged to 1 MiB;
* a ``Popen`` chain: each stage's ``stdout=PIPE`` is the next one's stdin;
* Python pumping between stages: three ``anyio.open_process`` children and a
  copy loop per inner pipe (every byte crosses the parent twice).

The last stage writes to ``/dev/null`` in every row, so the parent of the
first three never touches the data. The issue's targets: aioproc at least 0.95x
the shell, and at least 2x the Python pump.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

from ._core import Case, Impl, Measurement, Metric, Mode, run_on

AIOPROC = "aioproc.pipeline"
REFERENCE = Impl("sh -c (the shell's pipeline)")
POPEN_CHAIN = Impl("Popen chain")
PUMP = "anyio.open_process + copy loop"


def cases(mode: Mode) -> list[Case]:
    size = {"full": 2 << 30, "quick": 512 << 20, "smoke": 4 << 20}[mode]
    return [Case(f"{size >> 20} MiB through head | cat | cat", {"size": size})]


def _stages(size: int) -> list[list[str]]:
    return [["head", "-c", str(size), "/dev/zero"], ["cat"], ["cat"]]


def _shell(size: int) -> None:
    line = " | ".join(" ".join(stage) for stage in _stages(size))
    subprocess.run(["sh", "-c", f"{line} > /dev/null"], check=True)


def _popen_chain(size: int) -> None:
    null = subprocess.DEVNULL
    first, middle, last = _stages(size)
    a = subprocess.Popen(first, stdin=null, stdout=subprocess.PIPE)
    b = subprocess.Popen(middle, stdin=a.stdout, stdout=subprocess.PIPE)
    c = subprocess.Popen(last, stdin=b.stdout, stdout=null)
    for process in (a, b):
        assert process.stdout is not None
        process.stdout.close()
    for process in (a, b, c):
        if process.wait() != 0:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")


async def _aioproc(size: int) -> float:
    import aioproc

    null = aioproc.DEVNULL
    start = time.perf_counter()
    async with aioproc.pipeline(*_stages(size), stdin=null, stdout=null, stderr=null) as p:
        if await p.wait() != 0:
            raise RuntimeError(f"the pipeline exited with {p.returncodes}")
    return time.perf_counter() - start


async def _pump(size: int) -> float:
    import anyio
    from anyio.abc import ByteReceiveStream, ByteSendStream

    null = subprocess.DEVNULL
    first, middle, last = _stages(size)
    start = time.perf_counter()
    a = await anyio.open_process(first, stdin=null, stderr=null)
    b = await anyio.open_process(middle, stderr=null)
    c = await anyio.open_process(last, stdout=null, stderr=null)

    async def copy(source: ByteReceiveStream | None, sink: ByteSendStream | None) -> None:
        assert source is not None
        assert sink is not None
        async for chunk in source:
            await sink.send(chunk)
        await sink.aclose()

    async with a, b, c, anyio.create_task_group() as tg:
        tg.start_soon(copy, a.stdout, b.stdin)
        tg.start_soon(copy, b.stdout, c.stdin)
    for process in (a, b, c):
        if process.returncode != 0:
            raise RuntimeError(f"a stage exited with {process.returncode}")
    return time.perf_counter() - start


def run(impl: Impl, params: dict[str, Any]) -> dict[str, float]:
    """Time the transfer alone: the async rows start timing inside the running loop."""
    size: int = params["size"]
    if impl.loop is None:
        start = time.perf_counter()
        (_shell if impl == REFERENCE else _popen_chain)(size)
        seconds = time.perf_counter() - start
    else:
        main = _aioproc if impl.api == AIOPROC else _pump
        seconds = run_on(impl.loop, lambda: main(size))
    return {"mbps": size / seconds / 1e6}


MEASUREMENT = Measurement(
    name="pipeline",
    title="Pipeline: head | cat | cat, MB/s",
    impls=(
        Impl(AIOPROC, "asyncio"),
        Impl(AIOPROC, "uvloop"),
        Impl(AIOPROC, "trio"),
        REFERENCE,
        POPEN_CHAIN,
        Impl(PUMP, "asyncio"),
        Impl(PUMP, "trio"),
    ),
    reference=REFERENCE,
    metrics=(Metric("mbps", "MB/s", higher_is_better=True),),
    cases=cases,
    run=run,
    notes=(
        "Targets (issue 15): aioproc.pipeline at least 0.95x the shell, and at least 2x the "
        "Python pump.",
    ),
    requires="pipeline",
)
