"""run_process and the watcher as trio users expect them (issue 10 items 1-4, issue 16 items 5, 10).

* ``TaskGroup.start()`` hands the caller the streams it asked for by keyword;
* ``stdin=PIPE`` without ``start()`` or ``input`` is refused before a spawn;
* with SIGCHLD ignored, the lost exit status is 0, and nothing raises twice;
* a failing ``deliver_cancel`` cannot keep the child alive, whatever the warnings filter;
* ``timeout`` is checked, and a spent one raises ``TimeoutExpired``, never something else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import warnings
from collections.abc import Iterator

import pytest

import aioproc

from .helpers import children_of_us

PIPE = subprocess.PIPE


@pytest.fixture
def sigchld_ignored() -> Iterator[None]:
    """SIGCHLD set to SIG_IGN for the test, as daemons do; restored at teardown."""
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)


def refused_by_asyncio(anyio_backend: object, engine: str) -> bool:
    """Whether ``engine="asyncio"`` refuses to spawn with SIGCHLD ignored: on plain
    asyncio whose own child watcher is the pidfd one (3.12 on), which fails on a
    child the kernel reaped before it was watched."""
    from asyncio import unix_events

    can_use_pidfd = getattr(unix_events, "can_use_pidfd", lambda: False)
    return engine == "asyncio" and anyio_backend == "asyncio" and bool(can_use_pidfd())


@pytest.fixture
def errors_from_warnings() -> Iterator[None]:
    """Every warning raised as an exception, as users' ``-W error`` suites do."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# -- 3. SIGCHLD ignored ------------------------------------------------------------


@pytest.mark.usefixtures("sigchld_ignored", "errors_from_warnings")
@pytest.mark.parametrize("group", [False, True], ids=["alone", "group-leader"])
async def test_with_sigchld_ignored_the_lost_status_is_zero(
    anyio_backend: object, engine: str, group: bool
) -> None:
    if refused_by_asyncio(anyio_backend, engine):
        return  # test_asyncio_engine_refuses_to_race_the_kernel
    # libuv installs a SIGCHLD handler of its own when it spawns, so under uvloop
    # the asyncio engine still learns the true status.
    libuv_reaps = engine == "asyncio" and isinstance(anyio_backend, tuple)
    expected = 3 if libuv_reaps else 0
    process = await aioproc.open_process(
        ["sh", "-c", "sleep 0.2; exit 3"],
        stdin=None,
        stdout=None,
        stderr=None,
        process_group=0 if group else None,
        engine=engine,  # type: ignore[arg-type]
    )
    try:
        assert await process.wait() == expected
        assert process.returncode == expected
        assert await process.wait() == expected
    finally:
        await process.aclose()
    assert process.returncode == expected
    assert process.pid not in children_of_us()


@pytest.mark.usefixtures("sigchld_ignored", "errors_from_warnings")
async def test_with_sigchld_ignored_quick_children_are_watched_too(
    anyio_backend: object, engine: str
) -> None:
    if refused_by_asyncio(anyio_backend, engine):
        return  # test_asyncio_engine_refuses_to_race_the_kernel
    # Most are reaped by the kernel before their watch is even set up.
    for _ in range(50):
        result = await aioproc.run_process(["sh", "-c", "echo hi"], engine=engine)  # type: ignore[arg-type]
        assert result.returncode == 0
        assert result.stdout == b"hi\n"


@pytest.mark.usefixtures("sigchld_ignored", "errors_from_warnings")
async def test_asyncio_engine_refuses_to_race_the_kernel(anyio_backend: object) -> None:
    if not refused_by_asyncio(anyio_backend, "asyncio"):
        return  # uvloop, or asyncio's thread watcher: covered by the tests above
    with pytest.raises(RuntimeError, match="cannot start a child while SIGCHLD is ignored"):
        await aioproc.run_process(["true"], engine="asyncio")
    assert not children_of_us()


@pytest.mark.usefixtures("sigchld_ignored", "errors_from_warnings")
async def test_with_sigchld_ignored_a_running_child_still_polls_as_running(
    anyio_backend: object,
) -> None:
    async with aioproc.open_process(["sleep", "30"], stdin=None) as process:
        assert process.returncode is None
        process.kill()
        assert await process.wait() == 0  # the kernel took the status with it
    assert process.returncode == 0


async def test_a_stolen_child_warns_once_after_its_status_is_stored(
    anyio_backend: object,
) -> None:
    process = await aioproc.open_process(["true"], stdin=None, stdout=None, stderr=None)
    try:
        os.waitpid(process.pid, 0)  # somebody else's waitpid(-1), in effect
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(RuntimeWarning, match="reaped by someone else"):
                await process.wait()
            # The status was stored before the warning: nothing raises again.
            assert process.returncode == 0
            assert await process.wait() == 0
    finally:
        await process.aclose()
    assert process.returncode == 0


async def test_a_stolen_child_reports_zero_with_one_warning(anyio_backend: object) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with aioproc.open_process(["true"], stdin=None) as process:
            os.waitpid(process.pid, 0)
            assert await process.wait() == 0
            assert process.returncode == 0
    lost = [w for w in caught if "reaped by someone else" in str(w.message)]
    assert len(lost) == 1, [str(w.message) for w in caught]
